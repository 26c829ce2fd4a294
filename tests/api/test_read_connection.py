"""Read connections skip BEGIN/ROLLBACK on PostgreSQL; writes stay in one transaction."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.storage.db import driver_connection, read_connection, write_transaction


async def one_transaction(conn: AsyncConnection) -> bool:
    """Whether two statements, 20 ms apart, ran in the same transaction (PostgreSQL)."""
    first = (await conn.execute(text("SELECT transaction_timestamp()"))).scalar_one()
    await conn.execute(text("SELECT pg_sleep(0.02)"))
    second = (await conn.execute(text("SELECT transaction_timestamp()"))).scalar_one()
    return bool(first == second)


async def test_reads_are_autocommit_on_postgres_only(engine: AsyncEngine) -> None:
    async with read_connection(engine) as conn:
        assert conn.sync_connection is not None
        level = conn.sync_connection.get_execution_options().get("isolation_level")
        if engine.dialect.name == "postgresql":
            assert level == "AUTOCOMMIT"
            assert not await one_transaction(conn)
        else:
            assert level is None
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1


async def test_writes_stay_in_one_transaction_after_reads(engine: AsyncEngine) -> None:
    """Pooled connections used for reads must come back transactional for writers."""
    if engine.dialect.name != "postgresql":
        return  # SQLite has no transaction timestamps; its writes are covered elsewhere
    for _ in range(3):
        async with read_connection(engine) as conn:
            await conn.execute(text("SELECT 1"))
    async with write_transaction(engine) as conn:
        assert await one_transaction(conn)


def _one_connection_engine(postgres_url: str, *, ping_after_idle: float) -> AsyncEngine:
    from service.settings import Settings
    from service.storage.db import create_engine

    return create_engine(
        Settings(  # type: ignore[call-arg]
            database_url=postgres_url,
            db_pool_size=1,
            db_max_overflow=0,
            db_ping_after_idle=ping_after_idle,
            _env_file=None,
        )
    )


async def _log_statements(engine: AsyncEngine) -> list[str]:
    """What the one pooled connection sends from now on (asyncpg logs simple-protocol
    statements: the ping, BEGIN, COMMIT; not prepared ones)."""
    sent: list[str] = []
    async with engine.connect() as conn:  # the one pooled connection, now not fresh
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        driver.add_query_logger(lambda record: sent.append(record.query))
    return sent


async def test_idle_ping_is_one_round_trip_and_writes_still_begin(postgres_url: str) -> None:
    engine = _one_connection_engine(postgres_url, ping_after_idle=0)
    try:
        sent = await _log_statements(engine)
        async with read_connection(engine) as conn:
            await conn.execute(text("SELECT 1"))
        assert sent == [";"]  # was BEGIN; ; ROLLBACK; around the ping
        sent.clear()
        async with write_transaction(engine) as conn:
            await conn.execute(text("SELECT 2"))
        assert sent == [";", "BEGIN ISOLATION LEVEL READ COMMITTED;", "COMMIT;"]
    finally:
        await engine.dispose()


async def test_a_connection_used_moments_ago_is_not_pinged(postgres_url: str) -> None:
    engine = _one_connection_engine(postgres_url, ping_after_idle=60)
    try:
        sent = await _log_statements(engine)
        for _ in range(3):
            async with read_connection(engine) as conn:
                await conn.execute(text("SELECT 1"))
        assert sent == []
    finally:
        await engine.dispose()


async def test_a_pooled_connection_the_server_closed_is_replaced_unnoticed(
    postgres_url: str,
) -> None:
    """E.g. a restart: the server ends every session; the next checkout opens a new one."""
    engine = _one_connection_engine(postgres_url, ping_after_idle=60)
    other = _one_connection_engine(postgres_url, ping_after_idle=60)
    try:
        async with read_connection(engine) as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with read_connection(other) as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        for _ in range(50):  # the client sees the server's goodbye as soon as it reads it
            await asyncio.sleep(0.01)
        async with read_connection(engine) as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
    finally:
        await engine.dispose()
        await other.dispose()


async def test_the_driver_connection_comes_from_the_pool_with_its_checks(
    postgres_url: str,
) -> None:
    """``driver_connection`` (the audit flush) shares the pool: a connection the server closed
    is replaced at checkout, and one that dies during a statement is not put back."""
    engine = _one_connection_engine(postgres_url, ping_after_idle=60)
    other = _one_connection_engine(postgres_url, ping_after_idle=60)
    try:
        async with driver_connection(engine) as driver:
            assert not driver.is_in_transaction()  # autocommit: no transaction left open
            pid = await driver.fetchval("SELECT pg_backend_pid()")
        async with read_connection(other) as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        for _ in range(50):
            await asyncio.sleep(0.01)
        async with driver_connection(engine) as driver:
            pid = await driver.fetchval("SELECT pg_backend_pid()")
        assert pid is not None
        try:
            async with driver_connection(engine) as driver:
                await driver.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        except Exception:  # the server ends the session under the statement
            pass
        async with read_connection(engine) as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
    finally:
        await engine.dispose()
        await other.dispose()
