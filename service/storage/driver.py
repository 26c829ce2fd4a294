"""The hottest reads on the asyncpg connection itself (PostgreSQL read connections).

SQLAlchemy's execution of one statement (execution context, transaction bookkeeping, result
objects) cost ~90-150 µs of CPU on this machine against ~40 µs for the same prepared statement
on the driver connection it wraps (measured: bench/README.md, session 10). A read by id and a
poll run one such statement each. ``fetch_all`` runs a SELECT built by SQLAlchemy Core on the
connection's asyncpg connection when that connection is in autocommit (``read_connection`` on
PostgreSQL: each statement its own snapshot, as through SQLAlchemy), compiled once per
statement object, with the same bind and result processing SQLAlchemy applies. Anything else
goes through SQLAlchemy: other dialects, transactions, statements with expanding ``IN``
parameters or names that need escaping.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage.db import DRIVER_CONNECTION, DRIVER_READS

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _Plan:
    compiled: Any  # SQLCompiler
    sql: str
    names: tuple[str, ...]
    binds: tuple[Callable[[Any], Any] | None, ...]
    results: tuple[Callable[[Any], Any] | None, ...]


@functools.lru_cache(maxsize=2048)
def _plan(stmt: Select[Any]) -> _Plan | None:
    """Hot statements are built once (and cached by their callers), so this is per object."""
    compiled = stmt.compile(dialect=_DIALECT)
    if (
        compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.escaped_bind_names
        or compiled.positiontup is None
    ):
        return None
    names = tuple(compiled.positiontup)
    binds = tuple(compiled.binds[name].type.bind_processor(_DIALECT) for name in names)
    results = tuple(c.type.result_processor(_DIALECT, None) for c in stmt.selected_columns)
    return _Plan(compiled, compiled.string, names, binds, results)


async def fetch_all(
    conn: AsyncConnection, stmt: Select[Any], params: Mapping[str, Any] | None = None
) -> Sequence[Sequence[Any]]:
    """The rows of ``stmt`` (indexable by position), as ``(await conn.execute(...)).all()``."""
    plan = _plan(stmt) if conn.info.get(DRIVER_READS) else None
    if plan is None:
        result = await conn.execute(stmt, dict(params or {}))
        return list(result.all())
    driver: Any = conn.info.get(DRIVER_CONNECTION)
    if driver is None:
        raw = await conn.get_raw_connection()
        driver = conn.info[DRIVER_CONNECTION] = raw.driver_connection
    values = plan.compiled.construct_params(dict(params or {}))
    args = [
        value if process is None else process(value)
        for value, process in zip((values[n] for n in plan.names), plan.binds, strict=True)
    ]
    rows: list[Sequence[Any]] = await driver.fetch(plan.sql, *args)
    if not any(plan.results):
        return rows
    return [
        tuple(v if p is None else p(v) for v, p in zip(row, plan.results, strict=True))
        for row in rows
    ]
