"""Running a parsed search: keyset paging, totals, _include/_revinclude and the change feed.

Access control arrives as an ``AccessFilter``: a function that, for a resource type and the
columns of the rows being read, returns the SQL condition for what the caller may see (or None
when it may see nothing of that type). Filtering in SQL keeps paging exact: a page is never
short because rows were dropped after the query.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    bindparam,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import InvalidRequestError, Issue
from service.fhir.r4 import SUPPORTED_TYPES
from service.search.extract import entries_for
from service.search.query import (
    MAX_CHAIN,
    Criterion,
    Include,
    SearchRequest,
    criteria_condition,
    criterion_condition,
    index_exists,
    param_rows,
    sort_expression,
    value_condition,
)
from service.storage.driver import fetch_all
from service.storage.repository import (
    StoredResource,
    history_t,
    index_t,
    resource_t,
)


@dataclass(frozen=True, eq=False)
class RowCols:
    """The columns an access filter may use: id, version, last-updated of the rows read.

    Compared and hashed by identity (there are two, below), so conditions built for them can
    be cached."""

    id: Any
    version_id: Any
    last_updated: Any


AccessFilter = Callable[[str, RowCols], ColumnElement[bool] | None]


_ALL: ColumnElement[bool] = true()


def allow_all(_resource_type: str, _cols: RowCols) -> ColumnElement[bool] | None:
    return _ALL  # one object, so statements built from it can be cached


CURRENT_COLS = RowCols(resource_t.c.id, resource_t.c.version_id, resource_t.c.last_updated)
# Built once: an alias sets up its column collection when first used (~0.1 ms per poll).
_FEED_INDEX = index_t.alias("feed_index")
HISTORY_COLS = RowCols(history_t.c.id, history_t.c.version_id, history_t.c.last_updated)
# One expression object, so that the conditions built on it are cached (criterion_condition).
_PREVIOUS_VERSION = history_t.c.version_id - 1
_MIN_DATE = datetime(1, 1, 2, tzinfo=UTC)


@dataclass
class FeedEntry:
    stored: StoredResource
    matches: bool  # False: this version no longer matches (or is a deletion)


@dataclass
class SearchPage:
    matches: list[StoredResource] = field(default_factory=list)
    included: list[StoredResource] = field(default_factory=list)
    feed: list[FeedEntry] = field(default_factory=list)
    total: int | None = None
    next_page: str | None = None
    previous_page: str | None = None
    next_cursor: str | None = None
    issues: list[Issue] = field(default_factory=list)


def _encode(payload: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def _decode(token: str, name: str) -> list[Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        value = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise InvalidRequestError(
            f"{name} is not a valid paging token; follow the links the server returned",
            expression=[name],
        ) from exc
    if not isinstance(value, list):
        raise InvalidRequestError(f"{name} is not a valid paging token", expression=[name])
    return value


def _stored(row: Any) -> StoredResource:
    return StoredResource(row[0], row[1], row[2], row[3], row[4], row[5])


_CURRENT_COLUMNS = (
    resource_t.c.resource_type,
    resource_t.c.id,
    resource_t.c.version_id,
    resource_t.c.last_updated,
    resource_t.c.deleted,
    resource_t.c.raw,
)


def _base_where(
    request: SearchRequest, access: AccessFilter, base_url: str | None
) -> ColumnElement[bool] | None:
    allowed = access(request.resource_type, CURRENT_COLS)
    if allowed is None:
        return None

    def chained(crit: Criterion) -> ColumnElement[bool]:
        return chained_condition(
            crit,
            request.resource_type,
            id_col=resource_t.c.id,
            version_col=resource_t.c.version_id,
            access=access,
            base_url=base_url,
        )

    return and_(
        resource_t.c.resource_type == request.resource_type,
        resource_t.c.deleted.is_(False),
        criteria_condition(
            request,
            id_col=resource_t.c.id,
            version_col=resource_t.c.version_id,
            last_updated_col=resource_t.c.last_updated,
            base_url=base_url,
            chained=chained,
        ),
        allowed,
    )


# Per chain depth: the current rows of the type a reference leads to, and the source's
# reference rows (aliases, so that nested conditions never correlate with the wrong table).
_CHAIN_TARGETS = tuple(resource_t.alias(f"chain_target_{d}") for d in range(MAX_CHAIN))
_CHAIN_SOURCES = tuple(index_t.alias(f"chain_source_{d}") for d in range(MAX_CHAIN))
_CHAIN_COLS = tuple(RowCols(t.c.id, t.c.version_id, t.c.last_updated) for t in _CHAIN_TARGETS)


def chained_condition(
    crit: Criterion,
    resource_type: str,
    *,
    id_col: Any,
    version_col: Any,
    access: AccessFilter,
    base_url: str | None,
    depth: int = 0,
) -> ColumnElement[bool]:
    """A chained criterion (``location.address-city=Columbus``): the version references, through
    the first hop's parameter, a current resource of the hop's type that the caller may see
    (``access``) and that matches the rest of the chain. Nothing the caller cannot see is
    followed, so a chain never tells what exists elsewhere."""
    hop, target_type = crit.chain[0]
    rest = crit.unchained()
    target, source, cols = _CHAIN_TARGETS[depth], _CHAIN_SOURCES[depth], _CHAIN_COLS[depth]
    allowed = access(target_type, cols)
    if allowed is None:
        return false()
    if rest.chain:
        matches = chained_condition(
            rest,
            target_type,
            id_col=target.c.id,
            version_col=target.c.version_id,
            access=access,
            base_url=base_url,
            depth=depth + 1,
        )
    else:
        matches = criterion_condition(
            rest,
            target_type,
            id_col=target.c.id,
            version_col=target.c.version_id,
            last_updated_col=target.c.last_updated,
            base_url=base_url,
        )
    targets = select(literal(f"{target_type}/") + target.c.id).where(
        target.c.resource_type == target_type,
        target.c.deleted.is_(False),
        matches,
        allowed,
    )
    s = source.c
    return exists(
        select(1)
        .select_from(source)
        .where(
            s.resource_type == resource_type,
            *param_rows(s, hop),
            s.resource_id == id_col,
            s.version_id == version_col,
            s.value.in_(targets),
        )
    )


async def run_search(
    conn: AsyncConnection,
    request: SearchRequest,
    *,
    access: AccessFilter = allow_all,
    base_url: str | None = None,
) -> SearchPage:
    if request.cursor is not None:
        return await _run_feed(conn, request, access=access, base_url=base_url)
    page = SearchPage()
    where = _base_where(request, access, base_url)
    # A page of nothing asks only how many: answer it, as FHIR clients' count() expects.
    counted = request.total == "accurate" or request.summary == "count" or request.count == 0
    if where is None:
        page.total = 0 if counted else None
        return page
    if counted:
        count_stmt = select(func.count()).select_from(resource_t).where(where)
        page.total = int((await conn.execute(count_stmt)).scalar_one())
    if request.summary == "count" or request.count == 0:
        return page

    keys = [(sort_expression(request.resource_type, k), d, k) for k, d in request.sort]
    if not any(k == "_id" for _, _, k in keys):
        keys.append((resource_t.c.id, False, "_id"))
    exprs = [
        e if k == "_id" or k == "_lastUpdated" else func.coalesce(e, _MIN_DATE) for e, _, k in keys
    ]
    backwards = False
    stmt_where = where
    if request.page:
        token = _decode(request.page, "_page")
        if len(token) != len(keys) + 1 or token[0] not in ("f", "b"):
            raise InvalidRequestError(
                "_page does not belong to this search; follow the links the server returned",
                expression=["_page"],
            )
        backwards = token[0] == "b"
        values = [_from_token(v, k) for v, (_, _, k) in zip(token[1:], keys, strict=True)]
        stmt_where = and_(where, _keyset(exprs, [d for _, d, _ in keys], values, backwards))
    order = []
    for expr, (_, desc, _) in zip(exprs, keys, strict=True):
        ascending = desc == backwards
        order.append(expr.asc() if ascending else expr.desc())
    stmt = (
        select(*_CURRENT_COLUMNS, *exprs)
        .where(stmt_where)
        .order_by(*order)
        .limit(request.count + 1)
    )
    rows = (await conn.execute(stmt)).all()
    more = len(rows) > request.count
    rows = rows[: request.count]
    if backwards:
        rows = list(reversed(rows))
    page.matches = [_stored(r) for r in rows]
    width = len(_CURRENT_COLUMNS)
    if rows:
        first = [_to_token(v) for v in rows[0][width:]]
        last = [_to_token(v) for v in rows[-1][width:]]
        has_next = (more and not backwards) or (backwards and request.page is not None)
        has_prev = (more and backwards) or (not backwards and request.page is not None)
        if has_next:
            page.next_page = _encode(["f", *last])
        if has_prev:
            page.previous_page = _encode(["b", *first])
    await _add_includes(
        conn,
        request,
        page,
        seeds=page.matches,
        listed=page.matches,
        access=access,
        base_url=base_url,
    )
    return page


def _keyset(
    exprs: list[Any], descending: list[bool], values: list[Any], backwards: bool
) -> ColumnElement[bool]:
    ors = []
    for i in range(len(exprs)):
        eqs = [exprs[j] == values[j] for j in range(i)]
        after = descending[i] == backwards  # "greater than" in the walking direction
        cmp = exprs[i] > values[i] if after else exprs[i] < values[i]
        ors.append(and_(*eqs, cmp))
    return or_(*ors)


def _to_token(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat()
    if isinstance(value, str) and len(value) > 6 and value[4:5] == "-" and "T" not in value:
        return value
    return value


def _from_token(value: Any, key: str) -> Any:
    if key == "_id":
        if not isinstance(value, str):
            raise InvalidRequestError("_page token is damaged", expression=["_page"])
        return value
    try:
        parsed = datetime.fromisoformat(str(value).replace(" ", "T"))
        # The server writes UTC; another offset could leave the calendar (year 0 or 10000).
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequestError("_page token is damaged", expression=["_page"]) from exc


# --- includes -------------------------------------------------------------------------------


async def _add_includes(
    conn: AsyncConnection,
    request: SearchRequest,
    page: SearchPage,
    *,
    seeds: list[StoredResource],
    listed: list[StoredResource],
    access: AccessFilter,
    base_url: str | None,
) -> None:
    """Add to ``page.included`` what ``seeds`` include (and, with ``:iterate``, what those
    include), leaving out whatever the page already ``listed``."""
    if not (request.includes or request.revincludes) or not seeds:
        return
    seen = {(m.resource_type, m.id) for m in listed}
    frontier = list(seeds)
    first_round = True
    limit = request.max_included
    while frontier and len(page.included) < limit:
        # The most rows one statement need return: enough to fill the remaining room even if
        # every row seen so far comes back again, and one more to tell that some were left
        # out. Unbounded, a reverse include of a busy resource (every AuditEvent naming it)
        # would fetch every row before all but a few were dropped.
        rows = limit - len(page.included) + len(seen) + 1
        found: list[StoredResource] = []
        for inc in request.includes:
            if inc.iterate or first_round:
                found += await _forward(
                    conn, inc, frontier, access=access, base_url=base_url, rows=rows
                )
        for inc in request.revincludes:
            if inc.iterate or first_round:
                found += await _reverse(conn, inc, frontier, access=access, rows=rows)
        frontier = []
        for item in found:
            key = (item.resource_type, item.id)
            if key in seen:
                continue
            seen.add(key)
            if len(page.included) >= limit:
                page.issues.append(
                    Issue(
                        "warning",
                        "too-costly",
                        f"More than {limit} resources were to be included; the rest were left "
                        "out (limit HANDOFF_SEARCH_MAX_INCLUDED). Use a smaller _count.",
                    )
                )
                return
            page.included.append(item)
            frontier.append(item)
        first_round = False
        if not any(i.iterate for i in (*request.includes, *request.revincludes)):
            break


async def _forward(
    conn: AsyncConnection,
    inc: Include,
    sources: list[StoredResource],
    *,
    access: AccessFilter,
    base_url: str | None,
    rows: int,
) -> list[StoredResource]:
    wanted: dict[str, set[str]] = {}
    for src in sources:
        if src.resource_type != inc.source_type or src.raw is None:
            continue
        body = orjson.loads(src.raw)
        for _system, value, _lo, _hi in entries_for(inc.param, body, base_url):
            if not value or "/" not in value or "://" in value:
                continue
            rtype, _, rid = value.partition("/")
            if inc.target_type and rtype != inc.target_type:
                continue
            wanted.setdefault(rtype, set()).add(rid)
    out: list[StoredResource] = []
    for rtype, ids in wanted.items():
        allowed = access(rtype, CURRENT_COLS)
        if allowed is None:
            continue
        stmt = select(*_CURRENT_COLUMNS).where(
            resource_t.c.resource_type == rtype,
            resource_t.c.id.in_(sorted(ids)),
            resource_t.c.deleted.is_(False),
            allowed,
        )
        out += [_stored(r) for r in (await conn.execute(stmt.limit(rows))).all()]
    return out


async def _reverse(
    conn: AsyncConnection,
    inc: Include,
    targets: list[StoredResource],
    *,
    access: AccessFilter,
    rows: int,
) -> list[StoredResource]:
    refs = sorted({f"{t.resource_type}/{t.id}" for t in targets})
    if inc.target_type:
        refs = [r for r in refs if r.startswith(inc.target_type + "/")]
    allowed = access(inc.source_type, CURRENT_COLS)
    if not refs or allowed is None:
        return []
    c = index_t.c
    stmt = select(*_CURRENT_COLUMNS).where(
        resource_t.c.resource_type == inc.source_type,
        resource_t.c.deleted.is_(False),
        select(1)
        .select_from(index_t)
        .where(
            c.resource_type == inc.source_type,
            *param_rows(c, inc.param),
            c.resource_id == resource_t.c.id,
            c.version_id == resource_t.c.version_id,
            c.value.in_(refs),
        )
        .exists(),
        allowed,
    )
    return [_stored(r) for r in (await conn.execute(stmt.limit(rows))).all()]


# --- change feed ----------------------------------------------------------------------------


def fence_condition(dialect: str, txid_col: Any) -> ColumnElement[bool]:
    """Rows a reader may hand out without a later commit ever falling behind them.

    PostgreSQL: only rows written by transactions older than the oldest transaction still in
    progress (snapshot xmin); everything below it is final. SQLite has a single writer, so the
    insert order of ``seq`` is already the commit order.
    """
    if dialect == "postgresql":
        xmin = literal_column("pg_snapshot_xmin(pg_current_snapshot())::text::bigint", BigInteger)
        fence: ColumnElement[bool] = txid_col < xmin
        return fence
    return true()


def decode_cursor(token: str, name: str = "_cursor") -> tuple[int, int]:
    """A feed position; ``name``: the parameter that carried it (history's is ``_page``)."""
    txid, seq, _snapshot = _decode_position(token, name, kinds=("c",))
    return txid, seq


def decode_feed_cursor(token: str) -> tuple[int, int, bool]:
    """A search feed's position, and whether the feed is still in its first pass (True for
    ``start`` and the cursors handed out until that pass caught up: see ``_run_feed``)."""
    return _decode_position(token, "_cursor", kinds=("c", "s"))


def _decode_position(token: str, name: str, *, kinds: tuple[str, ...]) -> tuple[int, int, bool]:
    if token == "start":
        return (-1, -1, True)
    value = _decode(token, name)
    if len(value) != 3 or value[0] not in kinds or not all(_is_position(v) for v in value[1:]):
        if name != "_cursor":
            raise InvalidRequestError(
                f"{name} is not a valid paging token; follow the links the server returned",
                expression=[name],
            )
        raise InvalidRequestError(
            "_cursor is not a valid cursor: use _cursor=start or a cursor link from a page",
            expression=["_cursor"],
        )
    return int(value[1]), int(value[2]), value[0] == "s"


def _is_position(value: Any) -> bool:
    """A txid or seq as a cursor carries it: BIGINT, or -1 before the first."""
    return isinstance(value, int) and not isinstance(value, bool) and -1 <= value < 2**63


def encode_cursor(txid: int, seq: int, *, first_pass: bool = False) -> str:
    return _encode(["s" if first_pass else "c", txid, seq])


def _driving_criterion(request: SearchRequest) -> Criterion | None:
    """The criterion whose index rows the feed walks in commit order: a plain (unmodified)
    reference criterion if there is one (owner, patient...), else a plain token criterion."""
    plain = [c for c in request.criteria if c.modifier is None and not c.param.name.startswith("_")]
    for kind in ("reference", "token"):
        for crit in plain:
            if crit.param.kind == kind:
                return crit
    return None


@functools.lru_cache(maxsize=2048)
def _feed_statement(
    resource_type: str,
    criteria: tuple[Criterion, ...],
    limit: int,
    allowed: ColumnElement[bool],
    base_url: str | None,
    dialect: str,
    first_pass: bool = False,
) -> Select[Any]:
    """The feed query of one poll, built once per distinct poll (e.g. per owner and status;
    the cursor is a bind parameter): building it and its cache key cost ~10 % of a caught-up
    poll. Its parts are immutable expressions, so sharing the statement is safe.

    ``first_pass``: the statement of a feed's first pass (see ``_run_feed``), bounded by the
    ``upto_*`` position and keeping only current versions."""
    request = SearchRequest(resource_type=resource_type, criteria=list(criteria), count=limit)
    after = tuple_(
        bindparam("after_txid", type_=BigInteger), bindparam("after_seq", type_=BigInteger)
    )
    h = history_t.c
    # The walk picks the rows; each criterion is then a per-row index probe (see index_exists).
    probe = dialect == "postgresql"
    now_matches = criteria_condition(
        request,
        id_col=h.id,
        version_col=h.version_id,
        last_updated_col=h.last_updated,
        base_url=base_url,
        probe=probe,
    )
    prev_matches = criteria_condition(
        request,
        id_col=h.id,
        version_col=_PREVIOUS_VERSION,
        last_updated_col=h.last_updated,
        base_url=base_url,
        probe=probe,
    )
    columns = (
        h.resource_type,
        h.id,
        h.version_id,
        h.last_updated,
        h.deleted,
        h.raw,
        h.txid,
        h.seq,
        now_matches.label("now_matches"),
    )
    wanted: ColumnElement[bool] = or_(now_matches, prev_matches) if criteria else true()
    bound: list[ColumnElement[bool]] = []
    if first_pass:
        wanted = _first_pass_condition(now_matches, prev_matches, after)
        upto = tuple_(
            bindparam("upto_txid", type_=BigInteger), bindparam("upto_seq", type_=BigInteger)
        )
    driving = _driving_criterion(request)
    if driving is None:
        if first_pass:
            bound.append(tuple_(h.txid, h.seq) <= upto)
        return (
            select(*columns)
            .where(
                h.resource_type == resource_type,
                tuple_(h.txid, h.seq) > after,
                *bound,
                fence_condition(dialect, h.txid),
                wanted,
                allowed,
            )
            .order_by(h.txid, h.seq)
            .limit(limit)
        )
    d = _FEED_INDEX.c
    if first_pass:
        bound.append(tuple_(d.txid, d.seq) <= upto)
    values = [
        v
        for v in (value_condition(driving, x, base_url, table=_FEED_INDEX) for x in driving.values)
        if v is not None
    ]
    return (
        select(*columns)
        .select_from(_FEED_INDEX.join(history_t, h.seq == d.seq))
        .where(
            d.resource_type == resource_type,
            *param_rows(d, driving.param),
            or_(*values),
            tuple_(d.txid, d.seq) > after,
            *bound,
            fence_condition(dialect, d.txid),
            wanted,
            allowed,
        )
        .order_by(d.txid, d.seq)
        .limit(limit)
    )


_PREVIOUS = history_t.alias("feed_previous")


def _first_pass_condition(
    now_matches: ColumnElement[bool], prev_matches: ColumnElement[bool], after: Any
) -> ColumnElement[bool]:
    """The versions a first pass hands out: only a resource's current version (its earlier
    ones are history the client never had), and of those the ones that match, or that no
    longer match a version the pass already handed out (before the cursor)."""
    h = history_t.c
    r = resource_t.c
    p = _PREVIOUS.c
    current = (
        select(1)
        .select_from(resource_t)
        .where(r.resource_type == h.resource_type, r.id == h.id, r.version_id == h.version_id)
        .exists()
    )
    shown_before = (
        select(1)
        .select_from(_PREVIOUS)
        .where(
            p.resource_type == h.resource_type,
            p.id == h.id,
            p.version_id == _PREVIOUS_VERSION,
            tuple_(p.txid, p.seq) <= after,
        )
        .exists()
    )
    return and_(
        current,
        or_(and_(now_matches, h.deleted.is_(False)), and_(prev_matches, shown_before)),
    )


def _feed_end_statement(resource_type: str, dialect: str) -> Select[Any]:
    """The last position of a type's changes that no later commit can fall behind."""
    h = history_t.c
    return (
        select(h.txid, h.seq)
        .where(h.resource_type == resource_type, fence_condition(dialect, h.txid))
        .order_by(h.txid.desc(), h.seq.desc())
        .limit(1)
    )


def _feed_last_statement(resource_type: str) -> Select[Any]:
    """The last committed position of a type's changes, final or not (no fence)."""
    h = history_t.c
    return (
        select(h.txid, h.seq)
        .where(h.resource_type == resource_type)
        .order_by(h.txid.desc(), h.seq.desc())
        .limit(1)
    )


async def _run_feed(
    conn: AsyncConnection,
    request: SearchRequest,
    *,
    access: AccessFilter,
    base_url: str | None,
) -> SearchPage:
    """Every version, in commit order after the cursor, that matches or whose predecessor did.

    With a plain reference/token criterion (the provider poll: ``owner=...&status=...``) the
    walk follows that parameter's index rows in (txid, seq) order, so a caught-up poll is one
    empty index range probe. A version whose driving value itself changed (a Task reassigned to
    another owner) is reported under its new value only.

    A feed begun with ``_cursor=start`` first makes one pass up to the last final position:
    it hands out each resource's current version once (at that version's position), never its
    superseded ones, so a first sync acts on what is current. Its pages' cursors say they are
    in that pass; when a page reaches the end and nothing of the type is held back beyond it
    (by an older transaction still open), the cursor handed out is the end position, and from
    there every version is reported as it commits.
    """
    page = SearchPage()
    assert request.cursor is not None
    txid, seq, first_pass = decode_feed_cursor(request.cursor)
    allowed = access(request.resource_type, HISTORY_COLS)
    if allowed is None:
        page.next_cursor = encode_cursor(txid, seq)
        return page
    limit = max(request.count, 1)
    dialect = conn.dialect.name
    params = {"after_txid": txid, "after_seq": seq}
    end: tuple[int, int] = (txid, seq)
    if first_pass:
        last = (await conn.execute(_feed_end_statement(request.resource_type, dialect))).first()
        if last is not None and (int(last[0]), int(last[1])) > end:
            end = (int(last[0]), int(last[1]))
        params |= {"upto_txid": end[0], "upto_seq": end[1]}
    stmt = _feed_statement(
        request.resource_type,
        tuple(request.criteria),
        limit,
        allowed,
        base_url,
        dialect,
        first_pass,
    )
    rows = await fetch_all(conn, stmt, params)
    seen: set[int] = set()
    for row in rows:
        if row[7] in seen:  # a version with two index rows matching the driving values
            continue
        seen.add(row[7])
        stored = _stored(row)
        page.feed.append(FeedEntry(stored=stored, matches=bool(row[8]) and not stored.deleted))
    full = len(rows) >= limit
    if rows:
        page.next_cursor = encode_cursor(rows[-1][6], rows[-1][7], first_pass=first_pass and full)
        page.next_page = page.next_cursor if full else None
    else:
        page.next_cursor = encode_cursor(txid, seq)
    if first_pass and not full:
        last = (await conn.execute(_feed_last_statement(request.resource_type))).first()
        if last is not None and (int(last[0]), int(last[1])) > end:
            # Commits of this type lie beyond the fence (an older transaction is still open):
            # the pass goes on over them once they are final, or their superseded versions
            # would reach the client as changes.
            at = (rows[-1][6], rows[-1][7]) if rows else (txid, seq)
            page.next_cursor = encode_cursor(*at, first_pass=True)
        else:
            # The pass is over: what it skipped up to the end was superseded or never matched.
            page.next_cursor = encode_cursor(*end)
    # Includes follow what matches now (a version that left the search needs no context).
    await _add_includes(
        conn,
        request,
        page,
        seeds=[entry.stored for entry in page.feed if entry.matches],
        listed=[entry.stored for entry in page.feed],
        access=access,
        base_url=base_url,
    )
    return page


async def history_feed(
    conn: AsyncConnection,
    *,
    resource_type: str | None,
    after: tuple[int, int],
    count: int,
    since: datetime | None,
    access: AccessFilter,
) -> tuple[list[tuple[StoredResource, str]], tuple[int, int] | None]:
    """Type- or system-level history in commit order, from a cursor; returns the next cursor."""
    h = history_t.c
    conds: list[ColumnElement[bool]] = [
        tuple_(h.txid, h.seq) > tuple_(*after),
        fence_condition(conn.dialect.name, h.txid),
    ]
    if resource_type is not None:
        conds.append(h.resource_type == resource_type)
        allowed = access(resource_type, HISTORY_COLS)
        if allowed is None:
            return [], None
        conds.append(allowed)
    elif access is not allow_all:
        # System history: each type under its own access rule, so no tenant sees another's.
        per_type = [
            and_(h.resource_type == rtype, allowed)
            for rtype in SUPPORTED_TYPES
            if (allowed := access(rtype, HISTORY_COLS)) is not None
        ]
        if not per_type:
            return [], None
        conds.append(or_(*per_type))
    if since is not None:
        conds.append(h.last_updated >= since)
    stmt = (
        select(h.resource_type, h.id, h.version_id, h.last_updated, h.deleted, h.raw, h.method)
        .add_columns(h.txid, h.seq)
        .where(*conds)
        .order_by(h.txid, h.seq)
        .limit(count + 1)
    )
    rows = (await conn.execute(stmt)).all()
    more = len(rows) > count
    rows = rows[:count]
    out = [(_stored(r), str(r[6])) for r in rows]
    nxt = (int(rows[-1][7]), int(rows[-1][8])) if more and rows else None
    return out, nxt


__all__ = [
    "AccessFilter",
    "FeedEntry",
    "RowCols",
    "SearchPage",
    "allow_all",
    "decode_cursor",
    "decode_feed_cursor",
    "encode_cursor",
    "history_feed",
    "index_exists",
    "run_search",
]
