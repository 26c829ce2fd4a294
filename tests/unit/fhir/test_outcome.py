"""OperationOutcome bodies and the mapping of pydantic errors to issues."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from service.errors import InvalidResourceError, Issue
from service.fhir.outcome import (
    REQUEST_ID_EXTENSION,
    issues_from_validation_error,
    operation_outcome,
)
from service.fhir.r4 import model_for, r4_resource_model
from service.fhir.validate import validate_resource
from tests.unit.fhir.samples import task


def _pydantic_error(model: type[BaseModel], body: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return info.value


def _is_valid_r4b_outcome(outcome: dict[str, Any]) -> None:
    model = r4_resource_model("OperationOutcome")
    assert model is not None
    model.model_validate(outcome)


def test_outcome_carries_every_issue_field() -> None:
    issues = [
        Issue(
            "error", "code-invalid", "Task.status: 'bogus' is not a valid code", ("Task.status",)
        ),
        Issue("warning", "informational", "no expression"),
    ]
    outcome = operation_outcome(issues)
    assert outcome == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "code-invalid",
                "diagnostics": "Task.status: 'bogus' is not a valid code",
                "expression": ["Task.status"],
            },
            {"severity": "warning", "code": "informational", "diagnostics": "no expression"},
        ],
    }
    _is_valid_r4b_outcome(outcome)


def test_request_id_goes_in_id_and_an_extension() -> None:
    outcome = operation_outcome([Issue("error", "invalid", "x")], request_id="3f2a-17.b")
    assert outcome["id"] == "3f2a-17.b"
    assert outcome["extension"] == [{"url": REQUEST_ID_EXTENSION, "valueString": "3f2a-17.b"}]
    _is_valid_r4b_outcome(outcome)


def test_request_id_that_is_not_a_fhir_id_goes_in_the_extension_only() -> None:
    request_id = "req_01:ABC/xyz"
    outcome = operation_outcome([Issue("error", "invalid", "x")], request_id=request_id)
    assert "id" not in outcome
    assert outcome["extension"][0]["valueString"] == request_id
    _is_valid_r4b_outcome(outcome)


def test_outcome_without_issues_is_still_valid_r4() -> None:
    outcome = operation_outcome([])
    assert outcome["issue"] == [
        {"severity": "information", "code": "informational", "diagnostics": "ok"}
    ]
    _is_valid_r4b_outcome(outcome)


def test_outcome_of_a_real_rejection() -> None:
    body = task()
    body["status"] = "bogus"
    body["authoredOn"] = "2024-02-30"
    with pytest.raises(InvalidResourceError) as info:
        validate_resource(body)
    outcome = operation_outcome(info.value.issues, request_id="r1")
    assert {(i["code"], i["expression"][0]) for i in outcome["issue"]} == {
        ("code-invalid", "Task.status"),
        ("value", "Task.authoredOn"),
    }
    _is_valid_r4b_outcome(outcome)


def test_pydantic_errors_map_to_fhir_codes_and_paths() -> None:
    body = task()
    body["foo"] = 1
    body["authoredOn"] = "2024-13-45"
    body["input"][1]["valueString"] = 5
    body["restriction"]["period"]["start"] = "tomorrow"
    exc = _pydantic_error(model_for("Task"), body)
    got = {(i.code, i.expression) for i in issues_from_validation_error(exc, "Task")}
    assert got == {
        ("structure", ("Task.foo",)),
        ("value", ("Task.authoredOn",)),
        ("structure", ("Task.input[1].valueString",)),
        ("value", ("Task.restriction.period.start",)),
    }


def test_pydantic_value_error_names_the_value_and_fhir_type() -> None:
    body = task()
    body["authoredOn"] = "2024-02-30"
    exc = _pydantic_error(model_for("Task"), body)
    [issue] = issues_from_validation_error(exc, "Task")
    assert issue.diagnostics.startswith("Task.authoredOn: '2024-02-30' is not a valid dateTime: ")


def test_pydantic_missing_element_maps_to_required() -> None:
    body = task()
    del body["status"]
    exc = _pydantic_error(model_for("Task"), body)
    [issue] = issues_from_validation_error(exc, "Task")
    assert (issue.code, issue.expression) == ("required", ("Task.status",))


def test_pydantic_errors_inside_contained_resources_keep_their_path() -> None:
    body = task()
    body["contained"] = [{"resourceType": "Patient", "id": "a", "birthDate": "1990-13-01"}]
    exc = _pydantic_error(model_for("Task"), body)
    [issue] = issues_from_validation_error(exc, "Task")
    assert (issue.code, issue.expression) == ("value", ("Task.contained[0].birthDate",))


def test_primitive_extension_paths_use_the_element_name() -> None:
    body = task()
    body["_status"] = {"foo": 1}
    exc = _pydantic_error(model_for("Task"), body)
    [issue] = issues_from_validation_error(exc, "Task")
    assert (issue.code, issue.expression) == ("structure", ("Task.status",))  # not "_status"


@pytest.mark.parametrize(
    ("mutate", "code", "expression"),
    [
        (lambda b: b["input"][0].pop("valueDateTime"), "required", "Task.input[0].value[x]"),
        (lambda b: b["input"][0].update(valueString="x"), "structure", "Task.input[0].value[x]"),
    ],
    ids=["missing", "two values"],
)
def test_pydantic_choice_type_errors_point_at_the_choice(
    mutate: Any, code: str, expression: str
) -> None:
    body = task()
    mutate(body)
    exc = _pydantic_error(model_for("Task"), body)
    [issue] = issues_from_validation_error(exc, "Task")
    assert (issue.code, issue.expression) == (code, (expression,))


def test_choice_name_with_a_camel_case_base() -> None:
    body = {"resourceType": "Patient", "multipleBirthBoolean": True, "multipleBirthInteger": 2}
    exc = _pydantic_error(model_for("Patient"), body)
    [issue] = issues_from_validation_error(exc, "Patient")
    assert issue.expression == ("Patient.multipleBirth[x]",)
