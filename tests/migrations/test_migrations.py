"""Migrations: upgrade from empty, downgrade, upgrade again; no drift against the models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.storage.migrate import downgrade, head_revision, upgrade
from service.storage.tables import metadata


def _diff(url: str) -> list:
    async def run() -> list:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _rows(url: str, sql: str) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return list(await conn.execute(text(sql)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _execute(url: str, sql: str) -> None:
    async def run() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run())


def _tables(url: str) -> set[str]:
    if url.startswith("sqlite"):
        sql = "SELECT name FROM sqlite_master WHERE type='table'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    return {r[0] for r in _rows(url, sql)}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    url: str = request.getfixturevalue("postgres_url")
    downgrade(url)  # the session database starts migrated; take it back to empty
    request.addfinalizer(lambda: upgrade(url))
    return url


def test_upgrade_downgrade_upgrade_and_no_drift(fresh_url: str) -> None:
    upgrade(fresh_url)
    assert {"resource", "resource_history", "search_index"} <= _tables(fresh_url)
    assert _diff(fresh_url) == [], "models and migrations disagree: write a migration"
    downgrade(fresh_url)
    assert _tables(fresh_url) <= {"alembic_version"}
    upgrade(fresh_url)
    assert _diff(fresh_url) == []
    assert head_revision() is not None


def _compression(url: str) -> dict[tuple[str, str], str]:
    rows = _rows(
        url,
        "SELECT c.relname, a.attname, a.attcompression::text FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relname IN ('resource', 'resource_history', 'idempotency_record') "
        "AND a.attname IN ('raw', 'content', 'body') "
        "AND c.relnamespace = current_schema()::regnamespace",
    )
    return {(r[0], r[1]): r[2] for r in rows}


@pytest.mark.postgres
def test_stored_json_is_compressed_with_lz4_on_postgresql(fresh_url: str) -> None:
    """A page's AuditEvent (~26 KB) costs PostgreSQL ~6x less CPU to compress with lz4."""
    if not fresh_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    upgrade(fresh_url)
    assert set(_compression(fresh_url).values()) == {"l"}  # l = lz4, p = pglz
    downgrade(fresh_url, "0003")
    assert set(_compression(fresh_url).values()) == {"p"}
    upgrade(fresh_url)
    assert set(_compression(fresh_url).values()) == {"l"}


def _columns(url: str, table: str) -> set[str]:
    if url.startswith("sqlite"):
        return {r[1] for r in _rows(url, f"PRAGMA table_info({table})")}
    sql = f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
    return {r[0] for r in _rows(url, sql)}


def test_search_index_loses_its_surrogate_key_and_keeps_its_rows(fresh_url: str) -> None:
    """0006 drops ``search_index.row_id`` (nothing addresses one row; it cost every row
    written); existing rows stay, and the downgrade numbers them again."""
    upgrade(fresh_url, "0005")
    assert "row_id" in _columns(fresh_url, "search_index")
    insert = (
        "INSERT INTO search_index (resource_type, resource_id, version_id, param, value, txid,"
        " seq) VALUES ('Task', 't1', 1, 'status', 'requested', 0, 1)"
    )
    _execute(fresh_url, insert)
    upgrade(fresh_url)
    assert "row_id" not in _columns(fresh_url, "search_index")
    assert _rows(fresh_url, "SELECT resource_id, value FROM search_index") == [("t1", "requested")]
    _execute(fresh_url, insert.replace("'t1'", "'t2'"))
    downgrade(fresh_url, "0005")
    numbered = _rows(fresh_url, "SELECT resource_id, row_id FROM search_index ORDER BY row_id")
    assert [r[0] for r in numbered] == ["t1", "t2"] and all(r[1] is not None for r in numbered)
    upgrade(fresh_url)
