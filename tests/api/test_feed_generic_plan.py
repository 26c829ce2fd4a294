"""The provider poll stays a per-row probe in PostgreSQL's cached (generic) plan.

Prepared statements switch to a generic plan after five runs. Without the OFFSET 0 fence the
generic plan of the poll hashed every ``status=requested`` index row on each run (1 s per poll
at 1M Tasks); the fenced plan probes only the rows the cursor walk visits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.search.execute import encode_cursor
from service.settings import Settings
from service.storage.db import create_engine
from tests.api.test_explain import LOAD, search_statement
from tests.conftest import TABLES

pytestmark = [pytest.mark.postgres, pytest.mark.performance_contract]


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=postgres_url, _env_file=None))  # type: ignore[call-arg]
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
        await conn.execute(text(LOAD))
        for table in ("resource", "resource_history", "search_index"):
            await conn.execute(text(f"ANALYZE {table}"))
    yield engine
    await engine.dispose()


def _literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def _generic_plan(engine: AsyncEngine, params: list[tuple[str, str]]) -> tuple[str, int]:
    page, statement, parameters = await search_statement(engine, params)
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.execute(f"PREPARE feed_poll AS {statement}")
        try:
            await driver.execute("SET plan_cache_mode = force_generic_plan")
            args = ", ".join(_literal(p) for p in parameters)
            rows = await driver.fetch(f"EXPLAIN EXECUTE feed_poll({args})")
        finally:
            await driver.execute("RESET plan_cache_mode")
            await driver.execute("DEALLOCATE feed_poll")
    return "\n".join(r[0] for r in rows), len(page.feed)


async def test_poll_generic_plan_probes_instead_of_hashing(engine: AsyncEngine) -> None:
    plan, found = await _generic_plan(
        engine,
        [
            ("owner", "Organization/org-7"),
            ("status", "requested"),
            ("_cursor", encode_cursor(0, 0)),
            ("_count", "10"),
        ],
    )
    assert found == 6  # org-7 has 20 Tasks, 6 of them requested
    assert "hashed SubPlan" not in plan, plan
    assert "ix_search_feed" in plan, plan
    assert "Seq Scan" not in plan, plan
