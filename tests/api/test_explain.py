"""The provider poll (owner + status + cursor) and patient searches use indexes on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.search.execute import run_search
from service.search.query import parse_search
from service.settings import Settings
from service.storage.db import create_engine
from tests.conftest import TABLES

pytestmark = pytest.mark.postgres

LOAD = """
WITH n AS (SELECT g, 'task-' || g AS id FROM generate_series(1, 20000) g)
, h AS (
  INSERT INTO resource_history
    (txid, resource_type, id, version_id, last_updated, method, deleted, raw)
  SELECT 1, 'Task', id, 1, now(), 'POST', false, '{}' FROM n RETURNING id, seq
)
, r AS (
  INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, raw)
  SELECT 'Task', id, 1, now(), false, '{"resourceType":"Task"}' FROM n RETURNING id
)
INSERT INTO search_index (resource_type, resource_id, version_id, param, system, value, txid, seq)
SELECT 'Task', n.id, 1, p.param, p.system, p.value, 1, h.seq FROM n JOIN h ON h.id = n.id
CROSS JOIN LATERAL (VALUES
  ('owner', 'Organization', 'Organization/org-' || (g % 1000)),
  ('status', NULL, CASE WHEN g % 3 = 0 THEN 'requested' ELSE 'completed' END),
  ('patient', 'Patient', 'Patient/p-' || (g % 5000)),
  ('subject', 'Patient', 'Patient/p-' || (g % 5000))
) AS p(param, system, value)
"""


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=postgres_url, _env_file=None))
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
    yield engine
    await engine.dispose()


async def _plans(engine: AsyncEngine, params: list[tuple[str, str]]) -> str:
    async with engine.begin() as conn:
        await conn.execute(text(LOAD))
        for table in ("resource", "resource_history", "search_index"):
            await conn.execute(text(f"ANALYZE {table}"))
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_a: Any) -> None:
        captured.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with engine.connect() as conn:
            request = parse_search("Task", params, strict=True, default_count=50, max_count=1000)
            await run_search(conn, request)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    statement, parameters = captured[-1]
    plans = []
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        rows = await driver.fetch("EXPLAIN " + statement, *parameters)
        plans.append("\n".join(r[0] for r in rows))

    return "\n".join(plans)


async def test_poll_owner_status_cursor_uses_indexes(engine: AsyncEngine) -> None:
    plan = await _plans(
        engine,
        [("owner", "Organization/org-7"), ("status", "requested"), ("_cursor", "start")],
    )
    assert "Seq Scan on search_index" not in plan, plan
    assert "Seq Scan on resource_history" not in plan, plan
    assert "Index" in plan


async def test_owner_status_search_uses_indexes(engine: AsyncEngine) -> None:
    plan = await _plans(engine, [("owner", "Organization/org-7"), ("status", "requested")])
    assert "Seq Scan on search_index" not in plan, plan
    assert "Seq Scan on resource " not in plan + " ", plan


async def test_patient_search_uses_indexes(engine: AsyncEngine) -> None:
    plan = await _plans(engine, [("patient", "Patient/p-42")])
    assert "Seq Scan on search_index" not in plan, plan
    assert "Seq Scan on resource " not in plan + " ", plan
