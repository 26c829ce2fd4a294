"""Expensive requests cost their sender, not everyone: a statement past the statement timeout is
stopped and answered 400 (never 503), and the service keeps answering others meanwhile.

The expensive request is a real search: the total of hundreds of distinct ``identifier:not``
criteria (the search limits raised, as an operator may raise them: the statement timeout is
what stops whatever they let through) over 20,000 Tasks. PostgreSQL takes seconds to plan it,
SQLite tens of seconds to run it; the statement timeout here is 300 ms.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.storage.db import write_transaction
from service.storage.repository import index_t, resource_t

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
