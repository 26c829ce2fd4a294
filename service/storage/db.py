"""Engine creation for asyncpg and aiosqlite, and the two ways to hold a connection.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is durable against a process crash
but the last commits can be lost on power failure. That is the documented trade-off of the
embedded default; production runs on PostgreSQL.

Every statement runs under ``HANDOFF_DB_STATEMENT_TIMEOUT_MS``: PostgreSQL's own
``statement_timeout``, set for each connection as it opens; on SQLite a progress handler that
interrupts a statement past its deadline. ``cost_refusal`` tells such a stop (and a statement
the database refuses for its size) from an outage.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import orjson
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_only, greenlet_spawn

from service.fhir import exact_json
from service.settings import Settings

_IMMEDIATE = "handoff_immediate"


def _json_dumps(value: Any) -> str:
    return exact_json.dumps(value).decode()  # R4 decimals as written (fhir.exact_json)


def create_engine(settings: Settings) -> AsyncEngine:
    timeout_ms = settings.db_statement_timeout_ms
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.database_url,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"timeout": 30},
        )
        _configure_sqlite(engine)
        if timeout_ms:
            _sqlite_statement_timeout(engine, timeout_ms / 1000)
        return engine
    # A startup parameter of each connection: no statement of it, on SQLAlchemy's side or on
    # the asyncpg connection itself (storage.driver), runs longer, and it costs no round trip.
    server_settings = {"statement_timeout": str(timeout_ms)} if timeout_ms else {}
    engine = create_async_engine(
        settings.database_url,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        connect_args={"server_settings": server_settings},
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
        try:  # distance search (Location near) needs sin and cos
            cursor.execute("SELECT sin(0), cos(0)")
        except Exception:  # an SQLite built without its math functions
            dbapi_connection.create_function("sin", 1, math.sin, deterministic=True)
            dbapi_connection.create_function("cos", 1, math.cos, deterministic=True)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Write transactions take SQLite's single write lock up front, so that a read-then-write
        # (conditional create, If-Match check) can never interleave with another writer.
        if conn.get_execution_options().get(_IMMEDIATE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


_DEADLINE = "handoff.deadline"
# SQLite calls the progress handler every this many virtual machine steps (~15M a second on
# this machine): a statement stops within a few tens of milliseconds past its deadline, and the
# handler, which must take Python's GIL from the event loop, runs rarely.
_PROGRESS_STEPS = 1_000_000


class _Deadline:
    """When the statement running on one SQLite connection must stop (None: none running)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None

    def passed(self) -> int:
        """The progress handler: non-zero interrupts the statement (SQLITE_INTERRUPT)."""
        at = self.at
        return 1 if at is not None and time.monotonic() > at else 0


def _sqlite_statement_timeout(engine: AsyncEngine, seconds: float) -> None:
    """Each statement gets a deadline as it starts, cleared when it ends: COMMIT, which
    SQLAlchemy sends outside any statement, and the time between statements never count."""

    @event.listens_for(engine.sync_engine, "connect")
    def _install(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        deadline = record.info[_DEADLINE] = _Deadline()
        aiosqlite_connection: Any = record.driver_connection
        await_only(aiosqlite_connection.set_progress_handler(deadline.passed, _PROGRESS_STEPS))

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _start(conn: Connection, *_args: Any) -> None:
        deadline: _Deadline | None = conn.info.get(_DEADLINE)
        if deadline is not None:
            deadline.at = time.monotonic() + seconds

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _end(conn: Connection, *_args: Any) -> None:
        deadline: _Deadline | None = conn.info.get(_DEADLINE)
        if deadline is not None:
            deadline.at = None

    @event.listens_for(engine.sync_engine, "handle_error")
    def _failed(context: Any) -> None:
        conn = context.connection
        deadline = conn.info.get(_DEADLINE) if conn is not None else None
        if deadline is not None:
            deadline.at = None


# How each database says it stopped a statement for what the statement asked (see cost_refusal).
_PG_CANCELED = "57014"  # query_canceled: the statement timeout, or a cancel request
_PG_LIMITS = "54"  # program_limit_exceeded: statement too complex, too many arguments...
_SQLITE_SIZE = (
    "too many SQL variables",
    "Expression tree is too large",
    "too many terms in compound SELECT",
    "parser stack overflow",
    "too many arguments on function",
)


def cost_refusal(exc: BaseException) -> Literal["timeout", "size"] | None:
    """Why the database stopped a statement because of what it asked: ``timeout``, it ran
    past the statement timeout; ``size``, it passed a limit on a statement's size or
    complexity. None for anything else (an outage, a bug)."""
    orig: Any = exc.orig if isinstance(exc, DBAPIError) else exc  # asyncpg's, raised directly
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate == _PG_CANCELED:
            # Not an operator's pg_cancel_backend, nor a client's cancel: those are no verdict
            # on what the statement asked.
            return "timeout" if "statement timeout" in str(orig) else None
        return "size" if sqlstate.startswith(_PG_LIMITS) else None
    name = getattr(orig, "sqlite_errorname", None)
    if name == "SQLITE_INTERRUPT":  # only the deadline interrupts a statement here
        return "timeout"
    if name == "SQLITE_TOOBIG" or (name == "SQLITE_ERROR" and str(orig).startswith(_SQLITE_SIZE)):
        return "size"
    return None


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
            _forget(conn, _KNOWN_ROWS)


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
                _forget(conn, DRIVER_READS)
            return
        yield conn


def _forget(conn: AsyncConnection, key: str) -> None:
    """Drop ``key`` from the pooled connection's ``info``. A connection SQLAlchemy invalidated
    (a statement interrupted: its request cancelled when the client went away) is discarded
    with its ``info``, and asking for it would raise instead of letting the interruption
    through."""
    if not conn.invalidated:
        conn.info.pop(key, None)
