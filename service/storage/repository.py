"""Resource persistence on SQLAlchemy Core (no ORM session on the hot paths).

Functions take the caller's connection: the workflow owns the transaction, this module never
commits. Values move as plain dataclasses and JSON text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    false,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.storage.db import known_rows
from service.storage.driver import driver_fetch, fetch_all
from service.storage.tables import IdempotencyRecord, Resource, ResourceHistory, search_index

# SQLModel types ``__table__`` loosely; these are the Core tables the queries use.
resource_t = cast(Table, Resource.__table__)  # type: ignore[attr-defined]
history_t = cast(Table, ResourceHistory.__table__)  # type: ignore[attr-defined]
index_t = search_index
idempotency_t = cast(Table, IdempotencyRecord.__table__)  # type: ignore[attr-defined]


def probe_type(column: Any, resource_type: Any) -> ColumnElement[bool]:
    """``column = resource_type`` in a probe of one version's index rows (its ``resource_id``
    is given), written so that no index can use it: the probe then goes by
    ``ix_search_resource`` (a handful of rows) and cannot be planned as a walk over every row
    of a type and parameter, which PostgreSQL does for a type whose statistics lag behind its
    growth (measured in the referral benchmark: every Patient a jail had created, per check).
    """
    condition: ColumnElement[bool] = column.op("||")(literal_column("''")) == resource_type
    return condition


@functools.lru_cache(maxsize=256)
def aliased(table: Table, name: str) -> Any:
    """``table.alias(name)``, made once: building an alias sets up its column collection,
    which the tenancy and consent conditions would otherwise pay on every request."""
    return table.alias(name)


class IndexEntry(NamedTuple):
    # A tuple, not a frozen dataclass: a page's AuditEvent builds ~100 of these, and a frozen
    # dataclass's __init__ costs ~3x as much (measured 2.2 vs 0.8 µs).
    resource_type: str
    resource_id: str
    version_id: int
    param: str
    system: str | None = None
    value: str | None = None
    low: datetime | None = None
    high: datetime | None = None
    number: float | None = None


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource as stored. ``raw`` is None for a deletion."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    raw: str | None


@dataclass(frozen=True)
class HistoryEntry:
    stored: StoredResource
    method: str
    seq: int
    txid: int


# The writing transaction's id: the change feed's commit order (see search.execute).
_TXID: dict[str, ColumnElement[Any]] = {
    "postgresql": literal_column("pg_current_xact_id()::text::bigint", BigInteger),
    "sqlite": literal(0, BigInteger),
}


# Hot statements are built once with bind parameters: SQLAlchemy memoizes a statement's cache
# key on the object, so re-executing it skips building the expression and its key (most of
# the Python cost of a primary-key read).
_CURRENT_COLUMNS = (
    resource_t.c.version_id,
    resource_t.c.last_updated,
    resource_t.c.deleted,
    resource_t.c.raw,
)
_BY_KEY = and_(resource_t.c.resource_type == bindparam("rt"), resource_t.c.id == bindparam("rid"))
_GET_CURRENT = select(*_CURRENT_COLUMNS).where(_BY_KEY)
_GET_CURRENT_FOR_UPDATE = _GET_CURRENT.with_for_update()


async def get_current(
    conn: AsyncConnection, resource_type: str, resource_id: str, *, for_update: bool = False
) -> StoredResource | None:
    """The current row. In a write transaction, a row it wrote, locked or read before is
    answered again without a round trip: what it wrote is what it would read, a locked row
    cannot change, and an unlocked one read again is as if both reads ran at the first."""
    known = known_rows(conn)
    key = (resource_type, resource_id)
    if known is not None and key in known:
        stored, locked = known[key]
        if locked or not for_update:
            return cast(StoredResource, stored)
    stmt = (
        _GET_CURRENT_FOR_UPDATE
        if for_update and conn.dialect.name == "postgresql"
        else _GET_CURRENT
    )
    rows = await fetch_all(conn, stmt, {"rt": resource_type, "rid": resource_id})
    if not rows:
        return None
    row = rows[0]
    found = StoredResource(resource_type, resource_id, row[0], row[1], row[2], row[3])
    if known is not None:
        known[key] = (found, for_update)
    return found


@functools.lru_cache(maxsize=1024)
def _checked_select(condition: ColumnElement[bool]) -> Select[Any]:
    # Conditions are cached per organization and type (workflows.access), so this is too.
    return select(*_CURRENT_COLUMNS, condition.label("checked")).where(_BY_KEY)


async def get_current_checked(
    conn: AsyncConnection, resource_type: str, resource_id: str, condition: ColumnElement[bool]
) -> tuple[StoredResource, bool] | None:
    """The current version and whether ``condition`` (on ``resource`` columns) holds for it:
    one query where a read would otherwise fetch the row and then test its visibility."""
    rows = await fetch_all(
        conn, _checked_select(condition), {"rt": resource_type, "rid": resource_id}
    )
    if not rows:
        return None
    row = rows[0]
    return StoredResource(resource_type, resource_id, row[0], row[1], row[2], row[3]), bool(row[4])


@functools.lru_cache(maxsize=1024)
def _checked_many_select(
    conditions: tuple[tuple[str, ColumnElement[bool] | None], ...], count: int
) -> Select[Any]:
    r = resource_t.c
    checked = case(
        *((r.resource_type == rtype, cond) for rtype, cond in conditions if cond is not None),
        else_=false(),
    )
    keys = [
        and_(r.resource_type == bindparam(f"rt_{i}"), r.id == bindparam(f"rid_{i}"))
        for i in range(count)
    ]
    return select(r.resource_type, r.id, checked.label("checked")).where(or_(*keys))


async def which_pass(
    conn: AsyncConnection,
    targets: Sequence[tuple[str, str]],
    condition_for: Callable[[str], ColumnElement[bool] | None],
) -> dict[tuple[str, str], bool]:
    """For each existing (type, id) of ``targets``: whether its current row meets its type's
    condition (None: never). One query for all; unknown targets are absent from the answer."""
    if not targets:
        return {}
    types = sorted({rtype for rtype, _ in targets})
    stmt = _checked_many_select(tuple((t, condition_for(t)) for t in types), len(targets))
    params: dict[str, str] = {}
    for i, (rtype, rid) in enumerate(targets):
        params[f"rt_{i}"], params[f"rid_{i}"] = rtype, rid
    return {(r[0], r[1]): bool(r[2]) for r in await fetch_all(conn, stmt, params)}


async def get_version(
    conn: AsyncConnection, resource_type: str, resource_id: str, version_id: int
) -> StoredResource | None:
    stmt = select(history_t.c.last_updated, history_t.c.deleted, history_t.c.raw).where(
        history_t.c.resource_type == resource_type,
        history_t.c.id == resource_id,
        history_t.c.version_id == version_id,
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    return StoredResource(resource_type, resource_id, version_id, row[0], row[1], row[2])


# One row or many (executemany with RETURNING; rows are matched back by key).
_INSERT_HISTORY = {
    dialect: insert(history_t)
    .values(txid=txid)
    .returning(
        history_t.c.resource_type,
        history_t.c.id,
        history_t.c.seq,
        history_t.c.txid,
        sort_by_parameter_order=True,
    )
    for dialect, txid in _TXID.items()
}
_INSERT_RESOURCE = insert(resource_t)
# (Bind names differ from the column names, which SQLAlchemy reserves in SET.)
_UPDATE_RESOURCE = (
    update(resource_t)
    .where(_BY_KEY)
    .values(
        version_id=bindparam("u_version_id"),
        last_updated=bindparam("u_last_updated"),
        deleted=bindparam("u_deleted"),
        raw=bindparam("u_raw"),
        content=bindparam("u_content", type_=resource_t.c.content.type),
    )
)
_INSERT_INDEX = insert(index_t)
_INDEX_COLUMNS = (
    ("resource_type", "text"),
    ("resource_id", "text"),
    ("version_id", "integer"),
    ("param", "text"),
    ("system", "text"),
    ("value", "text"),
    ("low", "timestamptz"),
    ("high", "timestamptz"),
    ("number", "float8"),
    ("txid", "bigint"),
    ("seq", "bigint"),
)
_ENTRY_COLUMNS = _INDEX_COLUMNS[:-2]  # those an IndexEntry carries (not its version's position)
assert tuple(n for n, _ in _ENTRY_COLUMNS) == IndexEntry._fields  # transposed by position


def _history_row(stored: StoredResource, method: str) -> dict[str, Any]:
    return {
        "resource_type": stored.resource_type,
        "id": stored.id,
        "version_id": stored.version_id,
        "last_updated": stored.last_updated,
        "method": method,
        "deleted": stored.deleted,
        "raw": stored.raw,
    }


def _current_values(stored: StoredResource, content: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "version_id": stored.version_id,
        "last_updated": stored.last_updated,
        "deleted": stored.deleted,
        "raw": stored.raw,
        "content": content,
    }


async def _insert_index(
    conn: AsyncConnection, index: Sequence[IndexEntry], positions: Sequence[tuple[int, int]]
) -> None:
    """Insert ``index`` rows (SQLite; PostgreSQL writes them with their version, below);
    ``positions[i]`` is the (txid, seq) of ``index[i]``'s version."""
    if index:
        await conn.execute(_INSERT_INDEX, _index_rows(index, positions))


def _index_rows(
    index: Sequence[IndexEntry], positions: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    return [
        {name: getattr(e, name) for name, _ in _ENTRY_COLUMNS} | {"txid": txid, "seq": seq}
        for e, (txid, seq) in zip(index, positions, strict=True)
    ]


@dataclass(frozen=True)
class NewResource:
    """A resource's first version, with its content and index rows, ready to insert.
    ``content`` None: no JSONB copy (AuditEvents, see workflows.resources)."""

    stored: StoredResource
    content: dict[str, Any] | None
    index: Sequence[IndexEntry]


def _remember(conn: AsyncConnection, versions: Sequence[StoredResource]) -> None:
    # Recorded before the statement runs: if it fails, the transaction (and the record) ends.
    known = known_rows(conn)
    if known is not None:
        known.update({(v.resource_type, v.id): (v, True) for v in versions})


async def write_version(
    conn: AsyncConnection,
    *,
    stored: StoredResource,
    method: str,
    content: dict[str, Any] | None,
    index: Sequence[IndexEntry],
    with_new: Sequence[NewResource] = (),
) -> int:
    """Record one new version (history row, current row, index rows), and ``with_new`` (its
    AuditEvent) after it; returns the version's ``seq``."""
    _remember(conn, [stored])
    if conn.dialect.name == "postgresql":
        positions = await _write_versions_pg(
            conn,
            [
                (stored, method, index, content is not None),
                *((n.stored, "POST", n.index, n.content is not None) for n in with_new),
            ],
        )
        return positions[(stored.resource_type, stored.id)][1]
    row = (
        await conn.execute(_INSERT_HISTORY[conn.dialect.name], _history_row(stored, method))
    ).one()
    seq, txid = int(row[2]), int(row[3])
    values = _current_values(stored, content)
    if stored.version_id == 1:
        await conn.execute(
            _INSERT_RESOURCE, {"resource_type": stored.resource_type, "id": stored.id, **values}
        )
    else:
        await conn.execute(
            _UPDATE_RESOURCE,
            {"rt": stored.resource_type, "rid": stored.id}
            | {f"u_{k}": v for k, v in values.items()},
        )
    await _insert_index(conn, index, [(txid, seq)] * len(index))
    await insert_new_resources(conn, with_new)
    return seq


async def insert_new_resources(conn: AsyncConnection, items: Sequence[NewResource]) -> None:
    """Insert many first versions (group commit of AuditEvents).

    Each gets its own history position, as if written one by one in this transaction. The
    statements are the same whatever the batch size, so they compile (and prepare) once. On
    PostgreSQL it is ONE statement, the one the audit group commit runs in autocommit on the
    driver connection (``insert_new_resources_on_driver``)."""
    if not items:
        return
    if conn.dialect.name == "postgresql":
        await _write_versions_pg(conn, _first_versions(items))
        return
    returned = await conn.execute(
        _INSERT_HISTORY[conn.dialect.name], [_history_row(i.stored, "POST") for i in items]
    )
    positions = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in returned}
    await conn.execute(
        _INSERT_RESOURCE,
        [
            {
                "resource_type": i.stored.resource_type,
                "id": i.stored.id,
                **_current_values(i.stored, i.content),
            }
            for i in items
        ],
    )
    index: list[IndexEntry] = []
    index_positions: list[tuple[int, int]] = []
    for i in items:
        seq, tx = positions[(i.stored.resource_type, i.stored.id)]
        index.extend(i.index)
        index_positions.extend([(tx, seq)] * len(i.index))
    await _insert_index(conn, index, index_positions)


_VERSION_COLUMNS = (
    ("resource_type", "text"),
    ("id", "text"),
    ("version_id", "integer"),
    ("last_updated", "timestamptz"),
    ("method", "text"),
    ("deleted", "boolean"),
    ("raw", "text"),
    ("with_content", "boolean"),
)
# PostgreSQL: versions (one or many) with their history, current and index rows in ONE
# statement, one array per column: three round trips (and three executions through
# SQLAlchemy) become one. The current row is an upsert (a first version inserts it, a later
# one replaces it); ``uq_history_version`` still rejects two writers of the same version.
# ``content`` (JSONB for ad-hoc SQL) is parsed from the stored text by PostgreSQL, for the
# versions that keep one (``with_content``).
_WRITE_VERSIONS_PG = text(
    "WITH v AS (SELECT * FROM unnest("
    + ", ".join(f":v_{n} ::{t}[]" for n, t in _VERSION_COLUMNS)
    + f") AS v({', '.join(n for n, _ in _VERSION_COLUMNS)})), "
    f"h AS (INSERT INTO {history_t.name} "
    "(txid, resource_type, id, version_id, last_updated, method, deleted, raw) "
    "SELECT pg_current_xact_id()::text::bigint, "
    "resource_type, id, version_id, last_updated, method, deleted, raw FROM v "
    "RETURNING resource_type, id, seq, txid), "
    f"r AS (INSERT INTO {resource_t.name} "
    "(resource_type, id, version_id, last_updated, deleted, raw, content) "
    "SELECT resource_type, id, version_id, last_updated, deleted, raw, "
    "CASE WHEN with_content THEN raw::jsonb END FROM v "
    "ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id, "
    "last_updated = excluded.last_updated, deleted = excluded.deleted, raw = excluded.raw, "
    "content = excluded.content), "
    f"i AS (INSERT INTO {index_t.name} ({', '.join(n for n, _ in _INDEX_COLUMNS)}) "
    "SELECT "
    + ", ".join(f"x.{n}" for n, _ in _ENTRY_COLUMNS)
    + ", h.txid, h.seq FROM unnest("
    + ", ".join(f":i_{n} ::{t}[]" for n, t in _ENTRY_COLUMNS)
    + f") AS x({', '.join(n for n, _ in _ENTRY_COLUMNS)}) "
    "JOIN h ON h.resource_type = x.resource_type AND h.id = x.resource_id) "
    "SELECT resource_type, id, seq, txid FROM h"
)


def _write_versions_params(
    versions: Sequence[tuple[StoredResource, str, Sequence[IndexEntry], bool]],
) -> dict[str, list[Any]]:
    params: dict[str, list[Any]] = {f"v_{n}": [] for n, _ in _VERSION_COLUMNS}
    entries: list[IndexEntry] = []
    for stored, method, index, with_content in versions:
        for name, value in _history_row(stored, method).items():
            params[f"v_{name}"].append(value)
        params["v_with_content"].append(with_content)
        entries.extend(index)
    # One array per column: the entries (tuples) transposed.
    columns = list(zip(*entries, strict=True)) if entries else [()] * len(_ENTRY_COLUMNS)
    params.update({f"i_{n}": list(c) for (n, _), c in zip(_ENTRY_COLUMNS, columns, strict=True)})
    return params


async def _write_versions_pg(
    conn: AsyncConnection,
    versions: Sequence[tuple[StoredResource, str, Sequence[IndexEntry], bool]],
) -> dict[tuple[str, str], tuple[int, int]]:
    """Write ``(version, method, index rows, keep JSONB content)`` in one statement; (txid,
    seq) of each by key."""
    rows = await fetch_all(conn, _WRITE_VERSIONS_PG, _write_versions_params(versions))
    return {(r[0], r[1]): (int(r[3]), int(r[2])) for r in rows}


def _first_versions(
    items: Sequence[NewResource],
) -> list[tuple[StoredResource, str, Sequence[IndexEntry], bool]]:
    """New resources as ``_write_versions_params`` takes versions (created by POST)."""
    return [(i.stored, "POST", i.index, i.content is not None) for i in items]


async def insert_new_resources_on_driver(
    driver: Any, items: Sequence[NewResource], *, engine: AsyncEngine | None = None
) -> None:
    """``insert_new_resources`` on PostgreSQL's asyncpg connection itself (``driver``, from
    ``db.driver_connection``): the same one statement, its own transaction, without
    SQLAlchemy's execution around it (the audit group commit's flush)."""
    if not items:
        return
    params = _write_versions_params(_first_versions(items))
    await driver_fetch(driver, _WRITE_VERSIONS_PG, params, engine=engine)


def history_select(
    *,
    resource_type: str | None,
    resource_id: str | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
) -> Select[Any]:
    stmt = select(
        history_t.c.resource_type,
        history_t.c.id,
        history_t.c.version_id,
        history_t.c.last_updated,
        history_t.c.deleted,
        history_t.c.raw,
        history_t.c.method,
        history_t.c.seq,
        history_t.c.txid,
    )
    conditions: list[ColumnElement[bool]] = []
    if resource_type is not None:
        conditions.append(history_t.c.resource_type == resource_type)
    if resource_id is not None:
        conditions.append(history_t.c.id == resource_id)
    if since is not None:
        conditions.append(history_t.c.last_updated >= since)
    if before is not None:
        conditions.append(history_t.c.last_updated < before)
    return stmt.where(and_(*conditions)) if conditions else stmt


def history_entry(row: Any) -> HistoryEntry:
    stored = StoredResource(row[0], row[1], row[2], row[3], row[4], row[5])
    return HistoryEntry(stored=stored, method=row[6], seq=row[7], txid=row[8])


async def instance_history(
    conn: AsyncConnection,
    resource_type: str,
    resource_id: str,
    *,
    before_version: int | None,
    limit: int,
    since: datetime | None = None,
) -> list[HistoryEntry]:
    """Versions of one resource, newest first."""
    stmt = history_select(resource_type=resource_type, resource_id=resource_id, since=since)
    if before_version is not None:
        stmt = stmt.where(history_t.c.version_id < before_version)
    stmt = stmt.order_by(history_t.c.version_id.desc()).limit(limit)
    return [history_entry(r) for r in (await conn.execute(stmt)).all()]


async def index_value(
    conn: AsyncConnection, resource_type: str, resource_id: str, version_id: int, param: str
) -> str | None:
    found = await index_values(conn, resource_type, [(resource_id, version_id)], param)
    return found[(resource_id, version_id)]


async def index_values(
    conn: AsyncConnection, resource_type: str, versions: Sequence[tuple[str, int]], param: str
) -> dict[tuple[str, int], str | None]:
    """``param``'s value for each (id, version) of ``resource_type`` (None where it has none):
    one query for a page of records."""
    if not versions:
        return {}
    wanted = set(versions)
    found: dict[tuple[str, int], str | None] = dict.fromkeys(wanted)
    rows = await conn.execute(
        _INDEX_VALUES,
        {"rt": resource_type, "rids": sorted({rid for rid, _ in wanted}), "param": param},
    )
    for rid, vid, value in rows:
        if (rid, vid) in wanted and value is not None:
            found[(rid, vid)] = str(value)
    return found


async def values_up_to(
    conn: AsyncConnection, resource_type: str, versions: Sequence[tuple[str, int]], param: str
) -> dict[tuple[str, int], set[str]]:
    """For each (id, version): every value ``param`` had on that version or an earlier one
    (e.g. every organization that ever wrote it): one query for a page of records."""
    if not versions:
        return {}
    rows = (
        await conn.execute(
            _INDEX_VALUES,
            {"rt": resource_type, "rids": sorted({rid for rid, _ in versions}), "param": param},
        )
    ).all()
    found: dict[tuple[str, int], set[str]] = {key: set() for key in versions}
    for rid, version in versions:
        found[(rid, version)] = {
            str(value) for r, v, value in rows if r == rid and v <= version and value is not None
        }
    return found


_INDEX_VALUES = select(index_t.c.resource_id, index_t.c.version_id, index_t.c.value).where(
    probe_type(index_t.c.resource_type, bindparam("rt")),
    index_t.c.resource_id.in_(bindparam("rids", expanding=True)),
    index_t.c.param == bindparam("param"),
)
_EXISTS = select(resource_t.c.deleted).where(_BY_KEY)


@functools.lru_cache(maxsize=8)
def _with_identifiers(count: int) -> Any:
    # One exact (type, param, system, value) look-up per identifier, UNION ALL: an OR of them
    # was planned as a walk over every identifier row of the type (stale statistics).
    c = index_t.c
    lookups = [
        select(c.system, c.value, c.resource_id, c.version_id)
        .where(
            c.resource_type == bindparam("rt"),
            c.param == "identifier",
            c.system == bindparam(f"system_{i}"),
            c.value == bindparam(f"value_{i}"),
        )
        .order_by(c.resource_id, c.version_id.desc())  # each resource's newest versions
        .limit(bindparam("limit"))
        for i in range(count)
    ]
    return lookups[0] if count == 1 else union_all(*(q.subquery().select() for q in lookups))


async def versions_with_identifiers(
    conn: AsyncConnection,
    resource_type: str,
    identifiers: Sequence[tuple[str, str]],
    *,
    limit: int = 20,
) -> list[tuple[int, str, int]]:
    """(which of ``identifiers`` it carried, id, version) of every version, current or not,
    that carried one of them, by id and newest version first: from the identifiers' own index
    rows alone, so no planner estimate can make it scan a type. One query for all."""
    params: dict[str, Any] = {"rt": resource_type, "limit": limit}
    for i, (system, value) in enumerate(identifiers):
        params[f"system_{i}"], params[f"value_{i}"] = system, value
    rows = await conn.execute(_with_identifiers(len(identifiers)), params)
    found = [
        (identifiers.index((str(r[0]), str(r[1]))), str(r[2]), int(r[3]))
        for r in rows
        if (str(r[0]), str(r[1])) in identifiers
    ]
    return sorted(found, key=lambda f: (f[1], -f[2]))


async def resource_exists(conn: AsyncConnection, resource_type: str, resource_id: str) -> bool:
    known = known_rows(conn)
    if known is not None and (resource_type, resource_id) in known:
        return not known[(resource_type, resource_id)][0].deleted
    row = (await conn.execute(_EXISTS, {"rt": resource_type, "rid": resource_id})).first()
    return row is not None and not row[0]


async def purge_index(conn: AsyncConnection, resource_type: str, resource_id: str) -> None:
    """Drop index rows of a resource (used only by maintenance/tests)."""
    await conn.execute(
        delete(index_t).where(
            probe_type(index_t.c.resource_type, resource_type),
            index_t.c.resource_id == resource_id,
        )
    )


# --- Idempotency records -------------------------------------------------------------------


@dataclass(frozen=True)
class IdempotentResponse:
    request_hash: str
    status_code: int
    body: str
    created: datetime
    shown: str | None


_BY_CLIENT_KEY = (
    idempotency_t.c.client_id == bindparam("client_id"),
    idempotency_t.c.key == bindparam("key"),
)


async def get_idempotent_response(
    conn: AsyncConnection, client_id: str, key: str
) -> IdempotentResponse | None:
    c = idempotency_t.c
    row = (
        await conn.execute(
            select(c.request_hash, c.status_code, c.body, c.created, c.shown).where(
                *_BY_CLIENT_KEY
            ),
            {"client_id": client_id, "key": key},
        )
    ).first()
    return IdempotentResponse(row[0], row[1], row[2], row[3], row[4]) if row else None


async def delete_idempotent_response(conn: AsyncConnection, client_id: str, key: str) -> None:
    await conn.execute(
        delete(idempotency_t).where(*_BY_CLIENT_KEY), {"client_id": client_id, "key": key}
    )


async def purge_idempotent_responses(
    conn: AsyncConnection, *, before: datetime, limit: int = 500
) -> int:
    """Delete up to ``limit`` responses kept since before ``before``. Rows another replica is
    purging at the same moment are skipped (``SKIP LOCKED``), so replicas never wait on each
    other, and each purge is a short transaction however much has piled up."""
    c = idempotency_t.c
    expired = (
        select(c.client_id, c.key)
        .where(c.created < before)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await conn.execute(
        delete(idempotency_t).where(tuple_(c.client_id, c.key).in_(expired))
    )
    return int(result.rowcount or 0)


async def save_idempotent_response(
    conn: AsyncConnection,
    *,
    client_id: str,
    key: str,
    request_hash: str,
    status_code: int,
    body: str,
    created: datetime,
    shown: str,
) -> None:
    await conn.execute(
        insert(idempotency_t).values(
            client_id=client_id,
            key=key,
            request_hash=request_hash,
            status_code=status_code,
            body=body,
            created=created,
            shown=shown,
        )
    )


async def lock_key(conn: AsyncConnection, key: str) -> None:
    """Serialise transactions on one logical key until this transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: write transactions already hold the
    database's single write lock (BEGIN IMMEDIATE), so there is nothing more to take.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(_ADVISORY_LOCK, {"k": key})


_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))")
