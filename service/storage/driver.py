"""Hot statements on the asyncpg connection itself (PostgreSQL).

SQLAlchemy's execution of one statement (execution context, transaction bookkeeping, result
objects) cost ~90-150 µs of CPU on this machine against ~40 µs for the same prepared statement
on the asyncpg connection it wraps (measured with `python -m bench.compare`). ``fetch_all`` runs
a statement built with SQLAlchemy Core (a SELECT, or ``text()``) there, compiled once per
statement object, with the bind and result processing SQLAlchemy applies:

- on a PostgreSQL read connection (autocommit: each statement its own snapshot, as through
  SQLAlchemy);
- in a PostgreSQL write transaction once SQLAlchemy has begun it on the asyncpg connection
  (it begins lazily, at the first statement it runs): the statement runs inside it, and
  commits or rolls back with it.

Anything else goes through SQLAlchemy: SQLite, a transaction not begun yet, statements with
expanding ``IN`` parameters or bind names that need escaping. Errors are asyncpg's own
(``api.errors`` answers them as it does SQLAlchemy's).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from service.storage.db import DRIVER_CONNECTION, DRIVER_READS

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


# Called with (SQL, arguments) of each statement sent here, as SQLAlchemy's
# ``before_cursor_execute`` is for its own (which does not see these): tests count and
# inspect statements through both.
statement_listeners: list[Callable[[str, Sequence[Any]], None]] = []

# A span per statement sent here, by engine: telemetry registers a factory (given the SQL,
# never the parameters) where it traces SQLAlchemy's statements, which do not include these.
statement_spans: weakref.WeakKeyDictionary[Engine, Callable[[str], AbstractContextManager[Any]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class _Bind:
    """Where a positional argument comes from, as ``SQLCompiler.construct_params`` finds it
    (worked out once: construct_params walks every bind of the statement per execution)."""

    key: str  # the caller's name for it
    name: str  # the compiled name (anonymous binds: ``status_1``)
    required: bool
    value: Any  # used when the caller gives none (a literal built into the statement)
    process: Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Plan:
    compiled: Any  # SQLCompiler
    sql: str
    binds: tuple[_Bind, ...]
    results: tuple[Callable[[Any], Any] | None, ...]  # empty: rows as they come (text())


@functools.lru_cache(maxsize=2048)
def _plan(stmt: Executable) -> _Plan | None:
    """Hot statements are built once (and cached by their callers), so this is per object."""
    compiled = cast(Any, stmt).compile(dialect=_DIALECT)  # a SELECT or text()
    if (
        compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.escaped_bind_names
        or compiled.positiontup is None
    ):
        return None
    if any(bind.callable is not None for bind in compiled.binds.values()):
        return None  # a value computed per execution
    binds = tuple(
        _Bind(
            key=bind.key,
            name=name,
            required=bind.required,
            value=bind.value,
            process=bind.type.bind_processor(_DIALECT),
        )
        for name in compiled.positiontup
        for bind in (compiled.binds[name],)
    )
    columns = getattr(stmt, "selected_columns", ())
    results = tuple(c.type.result_processor(_DIALECT, None) for c in columns)
    return _Plan(compiled, compiled.string, binds, results)


def _arguments(plan: _Plan, params: Mapping[str, Any]) -> list[Any]:
    """The positional arguments of ``plan`` for ``params`` (by key, as SQLAlchemy takes them)."""
    args = []
    for bind in plan.binds:
        if bind.key in params:
            value = params[bind.key]
        elif bind.name in params:
            value = params[bind.name]
        elif bind.required:
            raise InvalidRequestError(f"A value is required for bind parameter {bind.key!r}")
        else:
            value = bind.value
        args.append(value if bind.process is None else bind.process(value))
    return args


async def driver_fetch(
    driver: Any,
    stmt: Executable,
    params: Mapping[str, Any] | None = None,
    *,
    engine: AsyncEngine | None = None,
) -> list[Sequence[Any]]:
    """The rows of ``stmt`` run on the asyncpg connection ``driver`` (positional), traced as
    ``engine``'s statements are."""
    plan = _plan(stmt)
    if plan is None:
        raise ValueError("this statement cannot run on the driver connection")
    return await _run(driver, plan, params or {}, engine)


async def _run(
    driver: Any, plan: _Plan, params: Mapping[str, Any], engine: AsyncEngine | None
) -> list[Sequence[Any]]:
    args = _arguments(plan, params)
    for listener in statement_listeners:
        listener(plan.sql, args)
    span = statement_spans.get(engine.sync_engine) if engine is not None else None
    if span is None:
        rows: list[Sequence[Any]] = await driver.fetch(plan.sql, *args)
    else:
        with span(plan.sql):
            rows = await driver.fetch(plan.sql, *args)
    if not any(plan.results):
        return rows
    return [
        tuple(v if p is None else p(v) for v, p in zip(row, plan.results, strict=True))
        for row in rows
    ]


async def _driver_of(conn: AsyncConnection) -> Any | None:
    """``conn``'s asyncpg connection, if a statement may run there now (see the module)."""
    if conn.dialect.name != "postgresql":
        return None
    reads = conn.info.get(DRIVER_READS)
    if not reads and not conn.in_transaction():
        return None  # nothing begun: SQLAlchemy's statement begins the transaction
    driver: Any = conn.info.get(DRIVER_CONNECTION)
    if driver is None:
        raw = await conn.get_raw_connection()
        driver = conn.info[DRIVER_CONNECTION] = raw.driver_connection
    if reads or driver.is_in_transaction():
        return driver
    return None


async def fetch_all(
    conn: AsyncConnection, stmt: Executable, params: Mapping[str, Any] | None = None
) -> Sequence[Sequence[Any]]:
    """The rows of ``stmt`` (indexable by position), as ``(await conn.execute(...)).all()``."""
    plan = _plan(stmt)
    driver = await _driver_of(conn) if plan is not None else None
    if plan is None or driver is None:
        result = await conn.execute(stmt, dict(params or {}))
        return list(result.all()) if result.returns_rows else []
    return await _run(driver, plan, params or {}, conn.engine)
