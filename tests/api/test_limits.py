"""What one request may cost: each limit is refused with an OperationOutcome naming its setting,
and exact repeats cost nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from tests.builders import FHIR_JSON, patient, task
from tests.statements import sent_with_parameters


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database_url=database_url,
        public_base_url=None,
        gc_gen0_threshold=0,
        search_max_included=2,
        default_page_size=5,
        max_page_size=5,
        _env_file=None,
    )


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"/fhir/{body['resourceType']}", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return r.json()


def refused(r: httpx.Response, setting: str, status: int = 400) -> str:
    """The diagnostics of a too-costly refusal that names ``setting``."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = next(i for i in body["issue"] if setting in i["diagnostics"])
    assert issue["code"] == "too-costly"
    return str(issue["diagnostics"])


def match_ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


@pytest.mark.performance_contract
async def test_a_parameter_repeated_400_times_is_one_criterion(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    wanted = await create(client, task(status="requested"))
    await create(client, task(status="accepted"))
    query = "&".join(["status=requested"] * 400)
    with sent_with_parameters(engine) as sent:
        r = await client.get(f"/fhir/Task?{query}")
    assert r.status_code == 200, r.text
    assert match_ids(r.json()) == {wanted["id"]}
    search = [values for sql, values in sent if "search_index" in sql and "requested" in values]
    assert search and all(values.count("requested") == 1 for values in search)
    self_link = next(x["url"] for x in r.json()["link"] if x["relation"] == "self")
    assert self_link.count("status=requested") == 1


async def test_repeated_values_and_reordered_criteria_collapse(client: httpx.AsyncClient) -> None:
    a = await create(client, task(status="requested"))
    b = await create(client, task(status="accepted"))
    await create(client, task(status="rejected"))
    values = ",".join(["requested", "accepted"] * 150)  # 300 values, 2 distinct
    r = await client.get(
        f"/fhir/Task?status={values}&status=accepted,requested&status=requested,accepted"
    )
    assert r.status_code == 200, r.text
    assert match_ids(r.json()) == {a["id"], b["id"]}


async def test_too_many_distinct_parameters(client: httpx.AsyncClient) -> None:
    query = "&".join(f"identifier=R-{i}" for i in range(31))
    text = refused(await client.get(f"/fhir/Task?{query}"), "HANDOFF_SEARCH_MAX_PARAMS")
    assert "31 distinct parameters" in text and "limit is 30" in text
    # The same limit holds for POST _search, however many exact repeats the form carries.
    form = "&".join(["status=requested"] * 20_000 + [f"_tag=t{i}" for i in range(30)])
    r = await client.post(
        "/fhir/Task/_search",
        content=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    refused(r, "HANDOFF_SEARCH_MAX_PARAMS")
    ok = await client.post(
        "/fhir/Task/_search",
        content="&".join(["status=requested"] * 20_000),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert ok.status_code == 200, ok.text


async def test_a_parameter_repeated_with_too_many_values(client: httpx.AsyncClient) -> None:
    five = "&".join(f"_tag=t{i}" for i in range(5))
    assert (await client.get(f"/fhir/Task?{five}")).status_code == 200
    six = "&".join(f"_tag=t{i}" for i in range(6))
    text = refused(await client.get(f"/fhir/Task?{six}"), "HANDOFF_SEARCH_MAX_REPEATS")
    assert "'_tag' is given 6 times" in text and "_tag=a,b" in text


async def test_too_many_values_in_one_parameter(client: httpx.AsyncClient) -> None:
    ids = ",".join(f"t{i}" for i in range(101))
    text = refused(await client.get(f"/fhir/Task?_id={ids}"), "HANDOFF_SEARCH_MAX_VALUES")
    assert "lists 101 values" in text
    hundred = ",".join(f"t{i}" for i in range(100))
    assert (await client.get(f"/fhir/Task?_id={hundred}")).status_code == 200


async def test_too_many_include_paths(client: httpx.AsyncClient) -> None:
    # Task:* stands for Task's 8 reference parameters, ServiceRequest:* for 7 (with encounter).
    assert (await client.get("/fhir/Task?_include=Task:*")).status_code == 200
    r = await client.get("/fhir/Task?_include=Task:*&_include:iterate=ServiceRequest:*")
    text = refused(r, "HANDOFF_SEARCH_MAX_INCLUDES")
    assert "15 _include and _revinclude paths" in text
    # Repeating one path costs nothing.
    repeated = "&".join(["_include=Task:owner"] * 20)
    assert (await client.get(f"/fhir/Task?{repeated}")).status_code == 200


async def test_included_resources_stop_at_the_limit_with_a_warning(
    client: httpx.AsyncClient,
) -> None:
    owners = [
        await create(client, {"resourceType": "Organization", "name": f"O{i}"}) for i in (1, 2, 3)
    ]
    for owner in owners:
        await create(client, task(owner=f"Organization/{owner['id']}"))
    r = await client.get("/fhir/Task?_include=Task:owner")
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert len([e for e in entries if e["search"]["mode"] == "match"]) == 3
    assert len([e for e in entries if e["search"]["mode"] == "include"]) == 2  # the setting
    outcome = next(e for e in entries if e["search"]["mode"] == "outcome")
    warning = outcome["resource"]["issue"][-1]
    assert warning["code"] == "too-costly"
    assert "HANDOFF_SEARCH_MAX_INCLUDED" in warning["diagnostics"]


async def test_limits_apply_to_an_if_none_exist_condition(client: httpx.AsyncClient) -> None:
    condition = "&".join(f"identifier=R-{i}" for i in range(31))
    r = await client.post(
        "/fhir/Task", json=task(), headers={**FHIR_JSON, "If-None-Exist": condition}
    )
    refused(r, "HANDOFF_SEARCH_MAX_PARAMS")


def bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def post_patient(i: int) -> dict[str, Any]:
    return {"resource": patient(booking=f"B-{i}"), "request": {"method": "POST", "url": "Patient"}}


@pytest.mark.parametrize("kind", ["batch", "transaction"])
async def test_a_bundle_of_too_many_entries_is_refused_whole(
    client: httpx.AsyncClient, kind: str
) -> None:
    r = await client.post(
        "/fhir", json=bundle(kind, [post_patient(i) for i in range(101)]), headers=FHIR_JSON
    )
    text = refused(r, "HANDOFF_BUNDLE_MAX_ENTRIES", status=413)
    assert "101 entries; the limit is 100" in text
    assert "transactions" in text if kind == "transaction" else "batches" in text
    assert "entry" not in (await client.get("/fhir/Patient")).json()  # nothing was written
    r = await client.post(
        "/fhir", json=bundle(kind, [post_patient(i) for i in range(100)]), headers=FHIR_JSON
    )
    assert r.status_code == 200, r.text


async def test_the_searches_of_a_batch_share_one_page_of_resources(
    client: httpx.AsyncClient,
) -> None:
    made = [await create(client, patient(booking=f"B-{i}")) for i in range(4)]
    search = [{"request": {"method": "GET", "url": "Patient?_count=3"}}] * 2
    lookups = [
        {"request": {"method": "GET", "url": "Patient?identifier=B-1"}},
        {"request": {"method": "GET", "url": f"Patient/{made[0]['id']}"}},
    ]
    r = await client.post("/fhir", json=bundle("batch", search + lookups), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    # 3 of the 5 (HANDOFF_MAX_PAGE_SIZE) go to the first search; the second would need 3 more.
    assert [e["response"]["status"] for e in entries] == ["200 OK", "413", "200 OK", "200 OK"]
    assert len(entries[0]["resource"]["entry"]) == 3
    issue = entries[1]["response"]["outcome"]["issue"][0]
    assert issue["code"] == "too-costly" and "HANDOFF_MAX_PAGE_SIZE" in issue["diagnostics"]
    assert len(entries[2]["resource"]["entry"]) == 1


async def test_a_url_over_the_limit(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Task", params={"identifier": "x" * 8200})
    text = refused(r, "HANDOFF_MAX_URL_BYTES", status=414)
    assert "POST /fhir/{type}/_search" in text
    assert r.headers["x-request-id"]
    r = await client.get("/fhir/Task", params={"identifier": "x" * 8000})
    assert r.status_code == 200, r.text


async def test_headers_over_the_limit(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Task", headers={"X-Padding": "x" * 16_500})
    refused(r, "HANDOFF_MAX_HEADER_BYTES", status=431)
    r = await client.get("/fhir/Task", headers={"X-Padding": "x" * 15_000})
    assert r.status_code == 200, r.text


async def test_a_client_at_its_share_is_refused_429_and_audited(
    app: Any, client: httpx.AsyncClient, org_client: Any
) -> None:
    """Its requests in progress stand in for themselves here (slots taken directly); the
    expensive-request tests take them with real searches. Every refusal is audited (the API
    tests' conftest checks it), also one whose body is not even JSON."""
    slots = app.state.client_concurrency
    share = app.state.settings.client_concurrency_limit
    assert share == 8  # the pool of 10 less 2
    for _ in range(share):
        slots.enter("test-admin")
    r = await client.get("/fhir/Task")
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"
    issue = r.json()["issue"][0]
    assert issue["code"] == "throttled"
    assert "HANDOFF_MAX_CONCURRENT_PER_CLIENT" in issue["diagnostics"]
    # FastAPI reads a /v1 body before it knows the caller: refused all the same.
    json_api = {"Content-Type": "application/json"}
    r = await client.post("/v1/referrals", content=b"not json", headers=json_api)
    assert r.status_code == 429, r.text
    other = await org_client("Organization/other")
    assert (await other.get("/fhir/Task")).status_code == 200
    slots.leave("test-admin")
    assert (await client.get("/fhir/Task")).status_code == 200
