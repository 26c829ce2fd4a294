"""What one request may cost: each limit is refused with an OperationOutcome naming its setting,
and exact repeats cost nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from tests.builders import FHIR_JSON, task
from tests.statements import sent_with_parameters


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database_url=database_url,
        public_base_url=None,
        gc_gen0_threshold=0,
        search_max_included=2,
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
    # Task:* stands for Task's 8 reference parameters, ServiceRequest:* for 6.
    assert (await client.get("/fhir/Task?_include=Task:*")).status_code == 200
    r = await client.get("/fhir/Task?_include=Task:*&_include:iterate=ServiceRequest:*")
    text = refused(r, "HANDOFF_SEARCH_MAX_INCLUDES")
    assert "14 _include and _revinclude paths" in text
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
