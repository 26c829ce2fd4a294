"""Engine creation for asyncpg and aiosqlite, and the two ways to hold a connection.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is durable against a process crash
but the last commits can be lost on power failure. That is the documented trade-off of the
embedded default; production runs on PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import greenlet_spawn

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
    )
    _ping_idle_connections(engine, after_idle=settings.db_ping_after_idle)
    return engine


def _ping_idle_connections(engine: AsyncEngine, *, after_idle: float) -> None:
    """Replace dead pooled connections before a request uses one, without a round trip on a
    busy service.

    A database restart or failover leaves the pool holding dead connections. The server closes
    them on shutdown and asyncpg notices at once (``is_closed``): such a connection is replaced
    at checkout (``DisconnectionError`` makes the pool open a new one), so a restart between
    requests is invisible. A connection that has been idle ``after_idle`` seconds is also
    pinged, for the deaths nobody announces (a dropped network path). SQLAlchemy's
    ``pool_pre_ping`` pinged on every checkout: a round trip per checkout, two per read, on a
    service whose connections are never idle.

    The ping is one bare round trip: idle connections are flagged autocommit (the asyncpg
    adapter's own attribute; nothing is sent), so the adapter does not wrap it in
    BEGIN ... ROLLBACK, and the flag is cleared before any statement runs.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _idle(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:
            dbapi_connection.autocommit = True
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if record.driver_connection is not None and record.driver_connection.is_closed():
            raise DisconnectionError("the server closed this pooled connection")
        if idle_since is not None and time.monotonic() - idle_since >= after_idle:
            try:
                dbapi_connection.ping()
            except Exception as exc:
                raise DisconnectionError("pooled connection is dead") from exc
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


_KNOWN_ROWS = "handoff.known_rows"


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction that commits when the block succeeds and rolls back on any error."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execution_options(**{_IMMEDIATE: True})
        # ``info`` outlives the checkout (it belongs to the pooled connection): the record of
        # the rows this transaction wrote or read is made here and dropped however it ends.
        conn.info[_KNOWN_ROWS] = {}
        try:
            async with conn.begin():
                yield conn
        finally:
            conn.info.pop(_KNOWN_ROWS, None)


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """PostgreSQL: the asyncpg connection itself, checked out of the engine's pool (with the
    pool's checkout checks and its reset on return), for statements that are each their own
    transaction (autocommit: no transaction is open on a checked-in connection).

    For the hottest statement only, the audit group commit's: SQLAlchemy's execution around
    one statement (a Connection, the autocommit option and its reset, the execution context and
    result) cost ~500 µs of CPU per flush against ~150 µs for the same statement here
    (measured, bench/README.md), and a flush holds one event at low concurrency."""
    fairy = await engine.raw_connection()
    driver: Any = fairy.driver_connection
    try:
        yield driver
    except BaseException:
        if driver.is_closed():  # the server went away: not back to the pool
            await greenlet_spawn(fairy.invalidate)
        raise
    finally:
        await greenlet_spawn(fairy.close)


# conn.info keys (storage.driver): this checkout is a read connection in autocommit (dropped
# at its end); and the pooled connection's asyncpg connection, once looked up (kept: SQLAlchemy
# clears a pooled connection's ``info`` when it replaces the connection).
DRIVER_READS = "handoff.driver_reads"
DRIVER_CONNECTION = "handoff.driver_connection"


def known_rows(conn: AsyncConnection) -> dict[tuple[str, str], Any] | None:
    """The current rows this write transaction has written or read so far, by (type, id), for
    the repository to answer again without a round trip (None outside ``write_transaction``)."""
    found: dict[tuple[str, str], Any] | None = conn.info.get(_KNOWN_ROWS)
    return found


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
            # Hot SELECTs may then run on the asyncpg connection itself (storage.driver):
            # autocommit there too. ``info`` outlives the checkout: dropped however it ends.
            conn.info[DRIVER_READS] = True
            try:
                yield conn
            finally:
                conn.info.pop(DRIVER_READS, None)
            return
        yield conn
