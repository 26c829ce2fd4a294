"""Engine creation for asyncpg and aiosqlite, and the two ways to hold a connection.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is durable against a process crash
but the last commits can be lost on power failure. That is the documented trade-off of the
embedded default; production runs on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from service.settings import Settings

_IMMEDIATE = "handoff_immediate"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"timeout": 30},
        )
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(
        settings.database_url,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_pre_ping=True,
    )
    _ping_in_one_round_trip(engine)
    return engine


def _ping_in_one_round_trip(engine: AsyncEngine) -> None:
    """Keep the pre-ping on every checkout, but make it one round trip instead of three.

    SQLAlchemy's asyncpg adapter wraps the ping in BEGIN ... ROLLBACK unless the connection is
    in autocommit (for PgBouncer's transaction mode, which this service's prepared statements
    do not support anyway). Idle pooled connections are flagged autocommit, so the ping is a
    bare round trip, and the flag is cleared again at checkout, before any statement runs:
    connections are used exactly as before. (The flag is the adapter's own attribute; nothing
    is sent to the server.)
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _idle_in_autocommit(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:
            dbapi_connection.autocommit = True

    @event.listens_for(engine.sync_engine, "checkout")
    def _transactional_again(
        dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: Any
    ) -> None:
        dbapi_connection.autocommit = False


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the sqlite3 module, issue BEGIN (so we can choose IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Write transactions take SQLite's single write lock up front, so that a read-then-write
        # (conditional create, If-Match check) can never interleave with another writer.
        if conn.get_execution_options().get(_IMMEDIATE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction that commits when the block succeeds and rolls back on any error."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execution_options(**{_IMMEDIATE: True})
        async with conn.begin():
            yield conn


@asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads.

    PostgreSQL at READ COMMITTED (its default): in autocommit, with no BEGIN/ROLLBACK around
    the reads. At that level each statement takes its own snapshot whether or not a
    transaction is open, so the answers are the same and two round trips are saved. At any
    stricter default level, and on SQLite, reads share one implicit transaction (one snapshot),
    rolled back on exit.
    """
    async with engine.connect() as conn:
        dialect = engine.dialect
        if dialect.name == "postgresql" and dialect.default_isolation_level == "READ COMMITTED":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
