"""Schemathesis, in process: requests generated from openapi/openapi.json, valid and not, sent
to the ASGI app on each database; none may be answered with a 5xx (``not_a_server_error``).

Each operation gets a fixed, bounded set of cases, the same on every run: schemathesis's
coverage cases (boundary values and wrong types for every parameter and body field, taken
evenly when there are many; none for whole-resource bodies, see ``WHOLE_RESOURCE``), then
positive and negative cases from its strategies (derandomized). A resource id of an existing
Patient or Task is given to some of the cases, so that updates, patches and reads reach the
stored resource and not only the 404. FHIR and
system operations are sent with an administrator's token, /v1 with a jail's (an organization
must be named for /v1 writes). The operations of one FHIR type or /v1 resource share an app
and database (deletes last), which keeps the set-up to a few seconds.

What conforms to the schema in other ways (status codes, content types, bodies, links) is
tests/journey/test_openapi_conformance.py's business, against a running server; this test is
the fast one, for CI, and asks only for zero server errors.

Left out, each for its reason:
- FHIR types other than ``FUZZED_TYPES``: the same generated routes serve every type (as in the
  journey test); the six fuzzed ones cover the rules that differ.
- ``/v1/hl7v2/adt``: its body is an HL7 v2 message, not JSON; tests/api/test_custody.py sends
  valid, malformed and duplicate ones.
- Search and history parameters: the OpenAPI does not describe them (FHIR's are per type, in
  /fhir/metadata), so schemathesis generates none; tests/api/test_edge_values.py and
  test_r4_round_trip.py drive them.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation
from sqlalchemy.ext.asyncio import AsyncEngine

from service.features.assessments.rules import ensure_builtin_content
from tests.builders import FHIR_JSON, organization, patient, task
from tests.journey.test_openapi_conformance import FUZZED_TYPES

OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
BASE = "http://testserver"
GENERATED = 8  # positive and negative cases from the strategies, each
COVERAGE = 30  # coverage cases at most
# A create or update body is a whole R4 resource, every datatype described: its coverage cases
# number in the thousands (minutes to enumerate). Its drawn cases are still sent.
WHOLE_RESOURCE = re.compile(r"^/fhir/[A-Z][A-Za-z]+(/\{resource_id\})?$")
SEEDED = 6  # positive cases naming an existing resource
# The organizations the OpenAPI's examples name (its /v1 examples refer to the demo's).
ORGANIZATIONS = ("demo-jail", "demo-otp", "demo-peer-support", "demo-ssp")
NEEDS_INSTRUMENTS = ("/v1/instruments", "/v1/assessments", "/v1/people/")
SEEDED_IDS = {"Patient": "fuzz-patient", "Task": "fuzz-task"}


@functools.cache
def _schema() -> Any:
    return schemathesis.openapi.from_path(OPENAPI)


def _fuzzed(path: str) -> bool:
    if path.startswith("/v1/hl7v2/"):
        return False  # an HL7 v2 body schemathesis cannot serialize (tests/api/test_custody.py)
    parts = path.split("/")
    if len(parts) > 2 and parts[1] == "fhir" and not parts[2].startswith(("_", ".", "metadata")):
        return parts[2] in FUZZED_TYPES
    return True


@functools.cache
def _operations() -> dict[str, APIOperation]:
    found = {}
    for result in _schema().get_all_operations():
        operation = result.ok()
        if _fuzzed(operation.path):
            found[operation.label] = operation
    return found


def _drawn(strategy: Any, count: int) -> list[Case]:
    """``count`` cases from a strategy, the same ones on every run."""
    cases: list[Case] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(case: Case) -> None:
        cases.append(case)

    with contextlib.suppress(Unsatisfiable):  # e.g. no negative value for an operation
        collect()  # without parameters
    return cases


def _evenly(cases: list[Case], count: int) -> list[Case]:
    if len(cases) <= count:
        return cases
    step = len(cases) / count
    return [cases[int(i * step)] for i in range(count)]


@functools.cache
def cases_for(label: str) -> list[Case]:
    """Built once per operation and process: both databases' runs send the same cases."""
    operation = _operations()[label]
    seeded_id = None
    if "{resource_id}" in operation.path:
        seeded_id = SEEDED_IDS.get(operation.path.split("/")[2])
    return list(_generate(operation, seeded_id))


def _generate(operation: APIOperation, seeded_id: str | None) -> Iterator[Case]:
    schema = _schema()
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    coverage = (
        []
        if operation.method.upper() in ("POST", "PUT") and WHOLE_RESOURCE.match(operation.path)
        else list(
            schema.iter_coverage_cases(
                operation,
                generation_modes=modes,
                generation_config=schema.config.generation_for(operation=operation),
            )
        )
    )
    yield from _evenly(coverage, COVERAGE)
    for mode in modes:
        yield from _drawn(operation.as_strategy(generation_mode=mode), GENERATED)
    if seeded_id is not None:
        strategy = operation.as_strategy(path_parameters={"resource_id": seeded_id})
        yield from _drawn(strategy, SEEDED)


async def _send(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    """The request schemathesis would send (prepared by requests, as its own transport does),
    through the test's client and its token."""
    kwargs = case.as_transport_kwargs(base_url=BASE)
    wanted = ("method", "url", "headers", "params", "cookies", "data", "json", "files")
    prepared = requests.Request(**{k: v for k, v in kwargs.items() if k in wanted}).prepare()
    headers = [
        (name.encode("latin-1", "replace"), _header_bytes(value))
        for name, value in prepared.headers.items()
        if name.lower() not in ("content-length", "host")
    ]
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    return await client.request(
        prepared.method or case.method, prepared.url or "", headers=headers, content=body
    )


def _header_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


async def _seed(client: httpx.AsyncClient) -> None:
    """Organizations the examples name, and a Patient and a Task to aim cases at."""
    bodies = [dict(organization(org, org), id=org) for org in ORGANIZATIONS]
    bodies += [
        dict(patient(), id=SEEDED_IDS["Patient"]),
        dict(task(owner="Organization/demo-otp"), id=SEEDED_IDS["Task"]),
    ]
    for body in bodies:
        url = f"/fhir/{body['resourceType']}/{body['id']}"
        r = await client.put(url, json=body, headers=FHIR_JSON)
        assert r.status_code == 201, r.text


def _group(path: str) -> str:
    """Operations tested together, on one app and database: a FHIR type's, a /v1 resource's,
    the rest of the system's (one set-up each instead of one per operation)."""
    parts = path.split("/")
    if parts[1] == "fhir" and len(parts) > 2 and parts[2] in FUZZED_TYPES:
        return f"fhir-{parts[2]}"
    if parts[1] == "v1":
        return f"v1-{parts[2]}"
    return parts[1] if parts[1] in ("fhir", "auth") else "health"


_METHOD_ORDER = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4}


@functools.cache
def _groups() -> dict[str, list[str]]:
    """Each group's operations, deletes last (they would leave the seeded resources gone)."""
    groups: dict[str, list[str]] = {}
    for label, operation in _operations().items():
        groups.setdefault(_group(operation.path), []).append(label)
    return {
        name: sorted(labels, key=lambda lb: (_METHOD_ORDER.get(lb.split()[0], 5), lb))
        for name, labels in sorted(groups.items())
    }


@pytest.mark.timeout(300)
@pytest.mark.parametrize("group", list(_groups()))
async def test_no_generated_request_gets_a_server_error(
    group: str, app: Any, engine: AsyncEngine, client: httpx.AsyncClient, org_client: Any
) -> None:
    labels = _groups()[group]
    if any(_operations()[lb].path.startswith(NEEDS_INSTRUMENTS) for lb in labels):
        await ensure_builtin_content(engine, app.state.settings, app.state.rules)
    await _seed(client)
    # /v1 is the JMS API: a client acting for an organization (the jail), as in production.
    jail = await org_client("Organization/demo-jail")
    failures = []
    for label in labels:
        sender = jail if label.split()[1].startswith("/v1") else client
        for case in cases_for(label):
            response = await _send(sender, case)
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except FailureGroup as group_failure:
                failures.append(f"{label}: {case.as_curl_command()}\n{group_failure}")
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:10])
