"""Expensive requests cost their sender, not everyone: a statement past the statement timeout is
stopped and answered 400 (never 503), and the service keeps answering others meanwhile.

The expensive request is a real search: the total of hundreds of distinct ``identifier:not``
criteria (the search limits raised, as an operator may raise them: the statement timeout is
what stops whatever they let through) over 20,000 Tasks. PostgreSQL takes seconds to plan it,
SQLite tens of seconds to run it; the statement timeout here is 300 ms.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.storage.db import write_transaction
from service.storage.repository import index_t, resource_t
from tests.conftest import BASE, TokenFactory

TASKS = 20_000
TIMEOUT_MS = 300


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database_url=database_url,
        public_base_url=None,
        gc_gen0_threshold=0,
        db_statement_timeout_ms=TIMEOUT_MS,
        search_max_params=1000,
        search_max_repeats=1000,
        _env_file=None,
    )


@pytest.fixture
async def many_tasks(engine: AsyncEngine) -> None:
    """TASKS Tasks with one identifier each, written straight into the tables (the API would
    take minutes)."""
    now = datetime.now(UTC)
    resources = [
        {
            "resource_type": "Task",
            "id": f"bulk-{i}",
            "version_id": 1,
            "last_updated": now,
            "deleted": False,
            "raw": orjson.dumps({"resourceType": "Task", "id": f"bulk-{i}"}).decode(),
            "content": None,
        }
        for i in range(TASKS)
    ]
    rows = [
        {
            "resource_type": "Task",
            "resource_id": f"bulk-{i}",
            "version_id": 1,
            "param": "identifier",
            "system": "https://example.org/bulk",
            "value": f"V-{i}",
            "low": None,
            "high": None,
            "number": None,
            "txid": 0,
            "seq": i + 1,
        }
        for i in range(TASKS)
    ]
    async with write_transaction(engine) as conn:
        await conn.execute(insert(resource_t), resources)
        await conn.execute(insert(index_t), rows)


EXPENSIVE = "/fhir/Task?_total=accurate&" + "&".join(f"identifier:not=V-{i}" for i in range(200))


async def test_a_statement_past_the_timeout_is_refused_with_400(
    client: httpx.AsyncClient, many_tasks: None
) -> None:
    r = await client.get(EXPENSIVE)
    assert r.status_code == 400, r.text
    assert "retry-after" not in r.headers  # nothing to wait for: the request asks too much
    issue = r.json()["issue"][0]
    assert issue["code"] == "too-costly"
    assert f"limit of {TIMEOUT_MS} ms (HANDOFF_DB_STATEMENT_TIMEOUT_MS)" in issue["diagnostics"]
    # The connection it ran on serves the next request.
    r = await client.get("/fhir/Task", params={"identifier": "V-7"})
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["bulk-7"]
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_one_clients_expensive_searches_leave_the_others_served(
    app: object, client: httpx.AsyncClient, issue_token: TokenFactory, many_tasks: None
) -> None:
    """Ten at once from one client: 8 (the pool of 10 less 2, the default share) run until the
    statement timeout stops them, 2 are refused 429; meanwhile another client's reads and the
    readiness probe are answered as usual."""
    token = await issue_token(scopes="system/*.cruds handoff/admin", client_id="greedy")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url=BASE,
        headers={"Authorization": f"Bearer {token}"},
    ) as greedy:

        async def others() -> list[httpx.Response]:
            answers = []
            for i in range(5):
                answers.append(await client.get("/fhir/Task", params={"identifier": f"V-{i}"}))
                answers.append(await client.get("/readyz"))
            return answers

        *expensive, served = await asyncio.gather(
            *(greedy.get(EXPENSIVE) for _ in range(10)), others()
        )
        assert all(r.status_code == 200 for r in served), [r.text for r in served]
        assert all(r.json() == {"status": "ready"} for r in served if r.url.path == "/readyz")
        statuses = sorted(r.status_code for r in expensive)
        assert statuses == [400] * 8 + [429] * 2, [r.text for r in expensive]
        for r in expensive:
            issue = r.json()["issue"][0]
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
                assert issue["code"] == "throttled"
                assert "HANDOFF_MAX_CONCURRENT_PER_CLIENT" in issue["diagnostics"]
            else:
                assert issue["code"] == "too-costly"
        # Every slot was given back.
        assert app.state.client_concurrency.held("greedy") == 0  # type: ignore[attr-defined]
        assert (await greedy.get("/fhir/Task", params={"identifier": "V-1"})).status_code == 200
