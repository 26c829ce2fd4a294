"""What the index extractor writes for reference and date parameters."""

from __future__ import annotations

from datetime import UTC, datetime

from service.fhir.dates import OPEN_END, OPEN_START
from service.search.extract import extract_index
from service.search.params import params_for


def _values(resource: dict, param: str) -> list[str | None]:
    rows = extract_index(resource, version_id=1, base_url="https://h.example/fhir")
    return [r.value for r in rows if r.param == param]


def test_patient_parameters_index_only_patient_references() -> None:
    # R4: AuditEvent's patient is entity.what.where(resolve() is Patient)
    event = {
        "resourceType": "AuditEvent",
        "id": "a1",
        "entity": [
            {"what": {"reference": "Task/t1/_history/3"}},
            {"what": {"reference": "Patient/p1"}},
        ],
    }
    # ... and is served by the entity rows whose value references a Patient (indexed once).
    # Reference rows keep no system: the value names the type (and the row stays out of the
    # token index ``ix_search_system_value``).
    assert _values(event, "patient") == []
    rows = extract_index(event, version_id=1, base_url="https://h.example/fhir")
    entity = [(r.system, r.value) for r in rows if r.param == "entity"]
    assert entity == [(None, "Task/t1"), (None, "Patient/p1")]
    patient = params_for("AuditEvent")["patient"]
    assert (patient.index_name, patient.index_target) == ("entity", "Patient")
    procedure = {"resourceType": "Procedure", "id": "x", "subject": {"reference": "Patient/p1"}}
    assert _values(procedure, "patient") == ["Patient/p1"]


def test_task_for_a_group_is_a_subject_but_not_a_patient() -> None:
    task = {"resourceType": "Task", "id": "t1", "for": {"reference": "Group/g1"}}
    assert _values(task, "patient") == []
    assert _values(task, "subject") == ["Group/g1"]
    task["for"] = {"reference": "https://h.example/fhir/Patient/p2"}
    assert _values(task, "patient") == ["Patient/p2"]


def test_open_period_ends_are_stored_as_for_ever() -> None:
    """No NULL ends: a date row is always a closed range, so every prefix is one indexed
    comparison (the search side relies on it)."""

    def dates(period: dict[str, str]) -> list[tuple[datetime | None, datetime | None]]:
        task = {"resourceType": "Task", "id": "t", "executionPeriod": period}
        rows = extract_index(task, version_id=1, base_url=None)
        return [(r.low, r.high) for r in rows if r.param == "period"]

    start = datetime(2026, 11, 10, tzinfo=UTC)
    end_of_day = datetime(2026, 11, 10, 23, 59, 59, 999999, tzinfo=UTC)
    assert dates({"start": "2026-11-10"}) == [(start, OPEN_END)]
    assert dates({"end": "2026-11-10"}) == [(OPEN_START, end_of_day)]
    assert dates({"start": "2026-11-10", "end": "2026-11-10"}) == [(start, end_of_day)]
    assert dates({}) == []
