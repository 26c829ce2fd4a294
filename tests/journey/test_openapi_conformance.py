"""Schemathesis drives the operations of the published OpenAPI (all of /v1, /auth and the
system level, and six FHIR types: see FUZZED_TYPES) against a running demo server (SQLite and
PostgreSQL) with generated requests, valid and not: no request may get a 5xx, an
undocumented status, an undocumented content type or headers, a body that breaks its schema,
or a 405 whose ``Allow`` is not what the path serves; malformed input must be refused, and a
token must be required where one is declared.

Every check runs, ``positive_data_acceptance`` included: a request valid by the schema must be
accepted. The schemas state the server's rules (service/openapi_schemas.py); what no schema
can state (whether a named resource exists, the state a resource is in, a date relative to
now, one field against another, a cursor the server issued) is listed in ``REFUSALS`` below,
operation by operation, with the documented 4xx OperationOutcome the server then answers and
why. Excluded: ``use_after_free``, which wants every request naming a deleted resource to fail,
where FHIR keeps a deleted resource's history readable (``GET [type]/[id]/_history`` answers
200 with the delete as its last entry; a read answers 410, tested in tests/api).

The access token is fetched again every two minutes (tests/journey/schemathesis_auth.py):
tokens live five minutes and a run on PostgreSQL can take longer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.fhir.r4 import SUPPORTED_TYPES
from tests.journey.test_fhirpy_provider import SERVER_LOG, server

__all__ = ["server"]  # the fixture, reused: a demo server on each database

CHECKS_EXCLUDED = "use_after_free"
# Read by tests/journey/schemathesis_auth.py in the schemathesis process. Not imported here: its
# @schemathesis.auth would then apply to the in-process fuzz tests of the same pytest run.
BASE_URL_ENV = "HANDOFF_CONFORMANCE_BASE_URL"
HOOKS = "tests.journey.schemathesis_auth"
# Every FHIR type is served by the same generated routes (api.routes.resources): fuzz the types
# whose rules differ (the referral workflow's Task and ServiceRequest, a plain Patient, an
# undeletable Consent, a read-only AuditEvent, a scored QuestionnaireResponse), not twenty
# copies of one code path (that tripled the run).
FUZZED_TYPES = {
    "Task",
    "ServiceRequest",
    "Patient",
    "Consent",
    "AuditEvent",
    "QuestionnaireResponse",
}
OTHER_TYPES = "|".join(sorted(set(SUPPORTED_TYPES) - FUZZED_TYPES))
# Not fuzzed as the jail: administrators' operations (the jail's token only ever gets 403), and
# the HL7 v2 intake, whose body schemathesis cannot serialize (tests/api/test_custody.py).
NOT_FUZZED = r"^/v1/admin/|^/fhir/Patient/\$merge$|^/v1/hl7v2/"


# Schema-valid requests the server refuses by design, each with a documented 4xx
# OperationOutcome whose message says what to change. (operation regex, extra statuses, why)
_DEFAULT_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
REFUSALS: list[tuple[str, list[str], str]] = [
    (
        r"^DELETE /fhir/Consent/",
        ["405"],
        "a Consent is revoked (status inactive), never deleted; 405 names the Allow'ed methods",
    ),
    (
        r"^DELETE /fhir/Task/",
        ["422"],
        "a referral Task is rejected or cancelled, not deleted: a state of the stored Task",
    ),
    (
        r"^(POST|PUT) /fhir/(Task|ServiceRequest|QuestionnaireResponse|Consent|Patient)(/|$)",
        ["400", "412", "422"],
        "400: JSON Schema counts 670.0 as an integer, FHIR JSON (and this server) does not; a "
        "PUT's body id must equal the URL's (one value against another). 412: a write names "
        "the version it replaces (state). 422: the referral workflow's rules: the "
        "Questionnaire, focus, owner and parties must exist, a Task moves by legal transitions",
    ),
    (
        r"^PATCH /fhir/",
        ["400", "412", "422"],
        "a JSON Patch applies to the stored resource: whether a path exists and whether the "
        "result is still a valid resource depend on it",
    ),
    (
        r"^POST /fhir$",
        ["400", "412", "422"],
        "a transaction's entries are resources of any type, referring to each other by "
        "urn:uuid; each entry is checked as its own create or update would be",
    ),
    (
        r"^POST /fhir/Patient/\$match$",
        ["400"],
        "$match needs a parameter named resource holding a Patient (one Parameters schema "
        "serves $match and $merge, whose parameters differ)",
    ),
    (
        r"^GET /fhir/Measure/([^/]+/)?\$evaluate-measure$",
        ["400", "422"],
        "periodEnd may not be before periodStart and a period spans at most three years (one "
        "parameter against another); measure must name one of the published Measures",
    ),
    (
        r"^POST /fhir/Measure/([^/]+/)?\$evaluate-measure$",
        ["400", "422"],
        "the Parameters must hold periodStart and periodEnd as dates, in order (one Parameters "
        "schema serves every operation, whose parameters differ)",
    ),
    (
        r"^GET /v1/measures$",
        ["422"],
        "to may not be before from and a period spans at most three years (one parameter "
        "against another); measure and stratify name published measures and stratifiers",
    ),
    (
        r"^(POST|PUT) /v1/follow-up-plans",
        ["422"],
        "an action's offset is at most 365 days after the release, counted in its unit (hours "
        "or days: one field against another), and an Idempotency-Key already used for another "
        "body is refused",
    ),
    (
        r"^GET /v1/directory$",
        ["422"],
        "within_km needs near: one parameter against another",
    ),
    (
        r"^GET /v1/(referrals|follow-ups)$",
        ["422"],
        "after is a cursor the server issued (a next link), not a value a client makes up",
    ),
    (
        r"^GET /v1/naloxone/summary$",
        ["422"],
        "facility must name a Location or Organization that exists",
    ),
    (
        r"^GET /v1/webhooks/[^/]+/events$",
        ["422"],
        "until may not be less than since: one parameter against another",
    ),
    (
        r"^(POST|PATCH) /v1/referrals/",
        ["422"],
        "a revoked or closed referral is not changed, re-referred or booked; the receiver, "
        "location and practitioner named must exist",
    ),
    (
        r"^POST /v1/(referrals|naloxone|overdose-responses|consents|assessments|people/)",
        ["422"],
        "named resources must exist (receiving organization, facility, consent recipients, an "
        "active instrument), and an Idempotency-Key already used for another body is refused",
    ),
    (
        r"^(POST|PATCH) /v1/bookings",
        ["422"],
        "the person's booking_number must be the booking's (one field against another), a "
        "transfer's at may not be in the future (relative to now), a cancelled booking is final",
    ),
]
# Any operation may name a resource the stateful phase has deleted: 410 Gone (added to each
# entry above too: the first entry matching an operation is the one that applies).
ANY_OPERATION: tuple[str, list[str], str] = (r"^", [], "a deleted resource answers 410 Gone")
# The coverage phase walks every keyword of a schema: for a whole R4 resource (every datatype
# and backbone element) that is thousands of requests per operation, so FHIR creates and
# updates are left to the fuzzing and stateful phases.


def _config() -> str:
    """schemathesis.toml: the refusals above, and the phases left out, per operation."""
    lines = []
    for pattern, statuses, _why in [*REFUSALS, ANY_OPERATION]:
        accepted = ", ".join(f'"{s}"' for s in [*_DEFAULT_ACCEPTED, *statuses, "410"])
        lines += [
            "[[operations]]",
            f"include-name-regex = '{pattern}'",
            f"checks.positive_data_acceptance.expected-statuses = [{accepted}]",
        ]
        if pattern.startswith("^(POST|PUT) /fhir/"):
            lines.append("phases.coverage.enabled = false")
        lines.append("")
    return "\n".join(lines)


def _schemathesis() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("schemathesis is not installed: pip install -e '.[test]'")
    return [found]


def test_every_operation_conforms_to_the_published_openapi(server: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(), encoding="utf-8")
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": HOOKS,
        BASE_URL_ENV: server,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [
            *_schemathesis(),
            "--config-file",
            str(config),
            "run",
            f"{server}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            CHECKS_EXCLUDED,
            "--exclude-path-regex",
            f"^/fhir/({OTHER_TYPES})(/|$)|{NOT_FUZZED}",
            "--max-examples",
            "5",
            "--seed",
            "1",
            # One worker: with threads, CPython 3.11's ast.parse (hypothesis describes its
            # strategies with it) fails now and then ("AST constructor recursion depth
            # mismatch"), a runtime error of the tool, not of the API.
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--no-color",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    (tmp_path / "schemathesis.out").write_text(run.stdout, encoding="utf-8")  # the full report
    found = run.stdout.partition("=== ERRORS ===")[2] or run.stdout.partition("=== FAILURES")[2]
    failures = [
        line for line in (tmp_path / SERVER_LOG).read_text().splitlines() if "unhandled" in line
    ]
    assert run.returncode == 0, (
        f"schemathesis found problems:\n{found[:12000]}{run.stderr[-2000:]}\n"
        + "server failures:\n"
        + "\n".join(failures[:20])
    )
    assert "Tested: " in run.stdout, run.stdout[-3000:]
