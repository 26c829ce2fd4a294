"""What a write transaction knows and stores: rows it wrote or read are answered again without a
round trip (and only within it, never a lock it did not take); resources keep a JSONB copy,
AuditEvents not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.storage import driver
from service.storage import repository as repo
from service.storage.db import create_engine, known_rows, read_connection, write_transaction
from service.storage.repository import StoredResource
from tests.builders import FHIR_JSON, task


def version(rid: str, n: int = 1) -> StoredResource:
    raw = f'{{"resourceType":"Organization","id":"{rid}","meta":{{"versionId":"{n}"}}}}'
    return StoredResource("Organization", rid, n, datetime.now(UTC), False, raw)


def count_statements(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Statements sent from now to the end of the test, through SQLAlchemy or (PostgreSQL's
    hottest) on the asyncpg connection itself."""
    seen: list[str] = []

    def capture(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's, sent as a statement
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    listeners = [*driver.statement_listeners, lambda statement, _args: seen.append(statement)]
    monkeypatch.setattr(driver, "statement_listeners", listeners)
    return seen


class Boom(Exception):
    pass


async def test_own_writes_are_read_back_without_a_query(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = count_statements(engine, monkeypatch)
    async with write_transaction(engine) as conn:
        written = version("own-1")
        await repo.write_version(conn, stored=written, method="POST", content={}, index=[])
        before = len(seen)
        assert await repo.get_current(conn, "Organization", "own-1") == written
        assert await repo.get_current(conn, "Organization", "own-1", for_update=True) == written
        assert await repo.resource_exists(conn, "Organization", "own-1")
        assert len(seen) == before  # no statement sent
        # Anything else still comes from the database.
        assert await repo.get_current(conn, "Organization", "other") is None
        assert await repo.get_current(conn, "Organization", "other") is None  # not remembered
        assert len(seen) == before + 2
        updated = version("own-1", 2)
        await repo.write_version(conn, stored=updated, method="PUT", content={}, index=[])
        assert await repo.get_current(conn, "Organization", "own-1") == updated
    async with read_connection(engine) as conn:
        assert known_rows(conn) is None
        stored = await repo.get_current(conn, "Organization", "own-1")
        assert stored is not None and stored.version_id == 2


async def test_a_rolled_back_write_is_forgotten_with_its_transaction(settings: Settings) -> None:
    # The record lives on the pooled connection's ``info``: a pool of one connection, so the
    # next transactions certainly reuse the one that wrote.
    engine = create_engine(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    try:
        await _rolled_back_then_reused(engine)
    finally:
        await engine.dispose()


async def _rolled_back_then_reused(engine: AsyncEngine) -> None:
    with pytest.raises(Boom):
        async with write_transaction(engine) as conn:
            await repo.write_version(
                conn, stored=version("gone"), method="POST", content={}, index=[]
            )
            raise Boom
    for _ in range(3):
        async with write_transaction(engine) as conn:
            assert known_rows(conn) == {}
            assert await repo.get_current(conn, "Organization", "gone") is None
            assert not await repo.resource_exists(conn, "Organization", "gone")


async def test_jsonb_copy_for_resources_but_not_audit_events(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    r = await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    created = r.json()
    async with read_connection(engine) as conn:
        rows = (
            await conn.execute(select(repo.resource_t.c.resource_type, repo.resource_t.c.content))
        ).all()
    contents = dict(rows)
    assert contents["Task"] == created  # the JSON as served, queryable by SQL
    assert "AuditEvent" in contents and contents["AuditEvent"] is None


async def test_a_row_read_is_answered_again_but_locked_only_by_the_database(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with write_transaction(engine) as conn:
        await repo.write_version(
            conn, stored=version("read-1"), method="POST", content={}, index=[]
        )
    seen = count_statements(engine, monkeypatch)
    async with write_transaction(engine) as conn:
        first = await repo.get_current(conn, "Organization", "read-1")
        assert first is not None and len(seen) == 1
        assert await repo.get_current(conn, "Organization", "read-1") == first
        assert await repo.resource_exists(conn, "Organization", "read-1")
        assert len(seen) == 1
        # A row only read is not locked: FOR UPDATE goes to the database (once).
        assert await repo.get_current(conn, "Organization", "read-1", for_update=True) == first
        assert len(seen) == 2
        if engine.dialect.name == "postgresql":
            assert "FOR UPDATE" in seen[-1]
        assert await repo.get_current(conn, "Organization", "read-1", for_update=True) == first
        assert len(seen) == 2
    async with write_transaction(engine) as conn:  # a new transaction reads afresh
        await repo.get_current(conn, "Organization", "read-1")
        assert len(seen) == 3


async def test_which_pass_checks_several_targets_in_one_query(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import literal

    async with write_transaction(engine) as conn:
        for rid in ("a", "b"):
            await repo.write_version(conn, stored=version(rid), method="POST", content={}, index=[])
    conditions = {
        "Organization": repo.resource_t.c.id == literal("a"),  # only "a" passes
        "Patient": None,  # never
    }
    seen = count_statements(engine, monkeypatch)
    async with read_connection(engine) as conn:
        found = await repo.which_pass(
            conn,
            [("Organization", "a"), ("Organization", "b"), ("Organization", "x"), ("Patient", "a")],
            conditions.get,
        )
    assert found == {("Organization", "a"): True, ("Organization", "b"): False}
    assert len(seen) == 1
