"""Bulk-load Tasks into the real schema, exactly as the service would have written them, by COPY.

Rows come from the service's own code: ``stamp`` and ``orjson.dumps`` for the stored JSON,
``extract_index`` for the index values, ``creator_entries`` for the creator row. To be fast,
that code runs once per *template* (one per status and priority) whose varying values are
placeholders; each Task is the template with its values put back. Every ``CHECK_EVERY``-th
Task is also built the slow way and compared, so the shortcut can never make the data differ.

Ids are UUIDv7 like the service's ``new_id()``, with RFC 9562's monotonic counter in place of
random bits (Task ``i`` sorts before Task ``i + 1``; the service's ids are time-ordered to the
millisecond). Transaction ids: the service stamps each version with its writing transaction's
id and the change feed hands out only rows below the oldest running transaction, so the loader
takes real, committed transaction ids, one per ``TXID_GROUP`` Tasks (as if each group had been
written by one transaction): loaded rows sort before anything the service writes later.

Two processes load at once, each table by one ``COPY ... FREEZE`` in the transaction that
empties it (no vacuum needed afterwards): one writes ``resource`` and ``resource_history`` in
Task order; the other writes ``search_index`` sorted by (param, value, Task), the order of
most of its secondary indexes, which PostgreSQL then builds from presorted input. Secondary
indexes are dropped first and rebuilt from their own definitions: the schema ends exactly as
the migration made it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from bench.tasks import body_from, task_body, task_fields
from service.fhir.dates import format_instant, parse_range
from service.fhir.resource import now_ms, stamp
from service.search.extract import extract_index
from service.workflows.access import creator_entries

TXID_GROUP = 100  # Tasks per transaction id
BATCH = 2_000  # Tasks per COPY chunk
CHECK_EVERY = 997  # build every Nth Task the slow way too, and compare
TABLES = ("resource", "resource_history", "search_index")

RESOURCE_COLUMNS = (
    "resource_type",
    "id",
    "version_id",
    "last_updated",
    "deleted",
    "raw",
    "content",
)
HISTORY_COLUMNS = (
    "seq",
    "txid",
    "resource_type",
    "id",
    "version_id",
    "last_updated",
    "method",
    "deleted",
    "raw",
)
INDEX_COLUMNS = (
    "resource_type",
    "resource_id",
    "version_id",
    "param",
    "system",
    "value",
    "low",
    "high",
    "number",
    "txid",
    "seq",
)

IndexValue = tuple[str, str | None, str | None, datetime | None, datetime | None]

# Placeholders for what varies per Task (they must not occur anywhere else in a Task).
_PLACEHOLDERS = {"num": "ZqNUMqZ", "owner": "ZqOWNqZ", "jail": "ZqJLqZ", "patient": "ZqPATqZ"}
_ID = "ZqIDqZ"
_DATE = "1901-02-03T04:05:00Z"  # a valid dateTime no generated Task carries
_LAST_UPDATED = datetime(1902, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
_LAST_UPDATED_TEXT = format_instant(_LAST_UPDATED)


def task_id(i: int, epoch_ms: int) -> str:
    """UUIDv7: 48-bit milliseconds, then a 12 + 62-bit counter (RFC 9562 §6.2, method 1)."""
    ms = epoch_ms + i // 4096
    rand_a = i % 4096
    rand_b = (i * 0x9E3779B97F4A7C15) & ((1 << 62) - 1)  # spread, still fixed by i
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def reference_rows(
    body: dict[str, Any], *, resource_id: str, last_updated: datetime
) -> tuple[str, list[IndexValue]]:
    """Stored JSON and index values of a newly created Task, computed the service's way."""
    final = stamp(body, resource_id=resource_id, version_id=1, last_updated=last_updated)
    entries = extract_index(final, version_id=1)
    entries += creator_entries(
        body["requester"]["reference"],
        resource_type="Task",
        resource_id=resource_id,
        version_id=1,
        previous_creator=None,
    )
    rows = [(e.param, e.system, e.value, e.low, e.high) for e in entries]
    return orjson.dumps(final).decode(), rows


@dataclass(frozen=True)
class _Template:
    raw: str
    rows: list[IndexValue]
    text_rows: frozenset[int]  # rows whose system/value hold a placeholder
    date_rows: frozenset[int]  # rows whose low/high come from the placeholder date
    by_param: dict[str, tuple[int, ...]]


class TaskRows:
    """Stored JSON and index values of Task ``i``, from per-status templates."""

    def __init__(self, *, owners: int, seed: int) -> None:
        self.owners = owners
        self.seed = seed
        self._templates: dict[tuple[str, str], _Template] = {}
        self._date_ranges: dict[str, tuple[datetime, datetime]] = {}
        sentinel = parse_range(_DATE)
        assert sentinel is not None
        self._sentinel_range = sentinel

    def fields(self, i: int) -> dict[str, str]:
        return task_fields(i, owners=self.owners, seed=self.seed)

    def template(self, f: dict[str, str]) -> _Template:
        key = (f["status"], f["priority"])
        found = self._templates.get(key)
        if found is None:
            found = self._templates[key] = self._make_template(*key)
        return found

    def _make_template(self, status: str, priority: str) -> _Template:
        fields = {**_PLACEHOLDERS, "date": _DATE, "status": status, "priority": priority}
        raw, rows = reference_rows(body_from(fields), resource_id=_ID, last_updated=_LAST_UPDATED)
        by_param: dict[str, list[int]] = {}
        for k, row in enumerate(rows):
            by_param.setdefault(row[0], []).append(k)
        return _Template(
            raw=raw,
            rows=rows,
            text_rows=frozenset(
                k for k, r in enumerate(rows) if "Zq" in (r[1] or "") or "Zq" in (r[2] or "")
            ),
            date_rows=frozenset(
                k for k, r in enumerate(rows) if (r[3], r[4]) == self._sentinel_range
            ),
            by_param={p: tuple(ks) for p, ks in by_param.items()},
        )

    def params(self, sample: Iterable[int]) -> list[str]:
        """Every indexed parameter of the Tasks in ``sample`` (all templates share them)."""
        names: set[str] = set()
        for i in sample:
            names.update(self.template(self.fields(i)).by_param)
        return sorted(names)

    def raw(self, f: dict[str, str], *, resource_id: str, last_updated_text: str) -> str:
        text = self.template(f).raw.replace(_ID, resource_id)
        text = text.replace(_LAST_UPDATED_TEXT, last_updated_text).replace(_DATE, f["date"])
        for name, placeholder in _PLACEHOLDERS.items():
            text = text.replace(placeholder, f[name])
        return text

    def row(self, t: _Template, k: int, f: dict[str, str]) -> IndexValue:
        param, system, value, low, high = t.rows[k]
        if k in t.text_rows:
            for name, placeholder in _PLACEHOLDERS.items():
                if system:
                    system = system.replace(placeholder, f[name])
                if value:
                    value = value.replace(placeholder, f[name])
        if k in t.date_rows:
            rng = self._date_ranges.get(f["date"])
            if rng is None:
                parsed = parse_range(f["date"])
                assert parsed is not None
                rng = self._date_ranges[f["date"]] = parsed
            low, high = rng
        return param, system, value, low, high

    def build(
        self, i: int, *, resource_id: str, last_updated_text: str
    ) -> tuple[str, list[IndexValue]]:
        f = self.fields(i)
        t = self.template(f)
        rows = [self.row(t, k, f) for k in range(len(t.rows))]
        return self.raw(f, resource_id=resource_id, last_updated_text=last_updated_text), rows

    def check(self, i: int, *, resource_id: str, last_updated: datetime) -> None:
        """The template route must give exactly what stamp + extract_index give."""
        raw, rows = self.build(
            i, resource_id=resource_id, last_updated_text=format_instant(last_updated)
        )
        body = task_body(i, owners=self.owners, seed=self.seed)
        want_raw, want_rows = reference_rows(
            body, resource_id=resource_id, last_updated=last_updated
        )
        if want_raw != raw:
            raise AssertionError(f"Task {i}: stored JSON differs from stamp():\n{want_raw}\n{raw}")
        if sorted(map(repr, want_rows)) != sorted(map(repr, rows)):
            raise AssertionError(f"Task {i}: index rows differ:\n{want_rows}\n{rows}")


@dataclass(frozen=True)
class Plan:
    dsn: str
    tasks: int
    owners: int
    seed: int
    epoch_ms: int
    xids: tuple[int, ...]

    def txid(self, i: int) -> int:
        return self.xids[i // TXID_GROUP]


# --- resource and resource_history, in Task order -----------------------------------------------


def _task_batches(plan: Plan) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    rows = TaskRows(owners=plan.owners, seed=plan.seed)
    for start in range(0, plan.tasks, BATCH):
        last_updated = now_ms()
        lu_text = format_instant(last_updated)
        resources: list[tuple[Any, ...]] = []
        history: list[tuple[Any, ...]] = []
        for i in range(start, min(start + BATCH, plan.tasks)):
            rid = task_id(i, plan.epoch_ms)
            if i % CHECK_EVERY == 0:
                rows.check(i, resource_id=rid, last_updated=last_updated)
            raw = rows.raw(rows.fields(i), resource_id=rid, last_updated_text=lu_text)
            resources.append(("Task", rid, 1, last_updated, False, raw, raw))
            history.append((i + 1, plan.txid(i), "Task", rid, 1, last_updated, "POST", False, raw))
        yield resources, history


async def _load_resources(plan: Plan) -> None:
    res_conn = await asyncpg.connect(plan.dsn)
    hist_conn = await asyncpg.connect(plan.dsn)
    res_queue: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(maxsize=2)
    hist_queue: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(maxsize=2)

    async def produce() -> None:
        for resources, history in _task_batches(plan):
            await res_queue.put(resources)
            await hist_queue.put(history)
            await asyncio.sleep(0)  # let both COPYs send what they have
        await res_queue.put(None)
        await hist_queue.put(None)

    try:
        await asyncio.gather(
            produce(),
            _copy_freeze(res_conn, "resource", RESOURCE_COLUMNS, _drain(res_queue)),
            _copy_freeze(hist_conn, "resource_history", HISTORY_COLUMNS, _drain(hist_queue)),
        )
    finally:
        await res_conn.close()
        await hist_conn.close()


async def _drain(
    queue: asyncio.Queue[list[tuple[Any, ...]] | None],
) -> AsyncIterator[tuple[Any, ...]]:
    while (batch := await queue.get()) is not None:
        for record in batch:
            yield record


# --- search_index, sorted by (param, value, Task) -----------------------------------------------


def index_records(plan: Plan) -> Iterator[tuple[Any, ...]]:
    """Every index row, ordered as ix_search_feed / ix_search_low and
    ix_search_system_value order them (by parameter, then value, then Task), NULL values last."""
    rows = TaskRows(owners=plan.owners, seed=plan.seed)
    fields = [rows.fields(i) for i in range(plan.tasks)]
    templates = [rows.template(f) for f in fields]
    ids = [task_id(i, plan.epoch_ms) for i in range(plan.tasks)]
    for param in rows.params(range(min(plan.tasks, 2 * 9 * 5))):
        buckets: dict[str | None, list[tuple[Any, ...]]] = {}
        for i, (f, t) in enumerate(zip(fields, templates, strict=True)):
            for k in t.by_param.get(param, ()):
                _, system, value, low, high = rows.row(t, k, f)
                seq = i + 1
                record = (
                    "Task",
                    ids[i],
                    1,
                    param,
                    system,
                    value,
                    low,
                    high,
                    None,
                    plan.txid(i),
                    seq,
                )
                bucket = buckets.get(value)
                if bucket is None:
                    bucket = buckets[value] = []
                bucket.append(record)
        nulls = buckets.pop(None, [])
        for value in sorted(buckets):  # type: ignore[type-var]
            yield from buckets[value]
        yield from nulls


async def _load_index(plan: Plan) -> None:
    conn = await asyncpg.connect(plan.dsn)

    async def records() -> AsyncIterator[tuple[Any, ...]]:
        for n, record in enumerate(index_records(plan)):
            yield record
            if n % 10_000 == 0:
                await asyncio.sleep(0)

    try:
        await _copy_freeze(conn, "search_index", INDEX_COLUMNS, records())
    finally:
        await conn.close()


# --- shared -------------------------------------------------------------------------------------


async def _copy_freeze(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    records: AsyncIterator[tuple[Any, ...]],
) -> None:
    """Empty ``table`` and fill it with one binary ``COPY ... FREEZE`` in one transaction.

    FREEZE writes rows already frozen and visible to all (no vacuum pass afterwards); it needs
    the table emptied in the same transaction. asyncpg's ``copy_records_to_table`` has no
    FREEZE option, so its two steps are spelled out here on the same (internal) calls.
    """
    cols = ", ".join(columns)
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = off")
        await conn.execute(f"TRUNCATE {table}")
        intro = await conn._prepare(f"SELECT {cols} FROM {table} LIMIT 1", use_cache=False)
        statement = f"COPY {table} ({cols}) FROM STDIN (FORMAT binary, FREEZE true)"
        await conn._protocol.copy_in(statement, None, None, records, intro._state, None)


def _run(job: str, plan: Plan) -> None:
    asyncio.run(_load_resources(plan) if job == "resources" else _load_index(plan))


async def _secondary_indexes(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
        ORDER BY i.indexname
        """,
        list(TABLES),
    )
    return [(r["indexname"], r["indexdef"]) for r in rows]


async def _build_indexes(dsn: str, definitions: list[tuple[str, str]], parallel: int) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    # ix_search_resource is the one index whose input is not presorted: start it first.
    for _name, ddl in sorted(definitions, key=lambda d: (d[0] != "ix_search_resource", d[0])):
        queue.put_nowait(ddl)

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SET maintenance_work_mem = '1GB'")
            await conn.execute("SET max_parallel_maintenance_workers = 0")
            while not queue.empty():
                await conn.execute(queue.get_nowait())
        finally:
            await conn.close()

    await asyncio.gather(*(run() for _ in range(parallel)))


async def _analyze(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        # COPY FREEZE set the visibility map; VACUUM finds nothing to do but is cheap insurance.
        for table in TABLES:
            await conn.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await conn.close()


async def _take_xids(conn: asyncpg.Connection, count: int) -> list[int]:
    """``count`` real transaction ids, each committed at once (autocommit statements)."""
    stmt = await conn.prepare("SELECT pg_current_xact_id()::text::bigint")
    return [int(await stmt.fetchval()) for _ in range(count)]


@dataclass(frozen=True)
class LoadReport:
    tasks: int
    owners: int
    index_rows: int
    seconds_copy: float
    seconds_index: float
    seconds_vacuum: float

    @property
    def seconds(self) -> float:
        return self.seconds_copy + self.seconds_index + self.seconds_vacuum


async def load_tasks(dsn: str, *, tasks: int, owners: int, seed: int = 1) -> LoadReport:
    """Replace every resource with ``tasks`` Tasks (version 1, created by POST)."""
    conn = await asyncpg.connect(dsn)
    try:
        definitions = await _secondary_indexes(conn)
        for name, _ddl in definitions:
            await conn.execute(f'DROP INDEX "{name}"')
        xids = await _take_xids(conn, -(-tasks // TXID_GROUP))
    finally:
        await conn.close()
    plan = Plan(dsn, tasks, owners, seed, int(time.time() * 1000), tuple(xids))

    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    jobs = [ctx.Process(target=_run, args=(job, plan)) for job in ("index", "resources")]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    failed = [j.exitcode for j in jobs if j.exitcode != 0]
    if failed:
        raise RuntimeError(f"a loader process failed (exit codes {failed})")
    copied = time.perf_counter()
    await _build_indexes(dsn, definitions, parallel=min(2, os.cpu_count() or 1))
    indexed = time.perf_counter()
    await _analyze(dsn)
    analysed = time.perf_counter()

    conn = await asyncpg.connect(dsn)
    try:
        after = await _secondary_indexes(conn)
        if after != definitions:
            raise RuntimeError(f"indexes differ after the load: {after} != {definitions}")
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('resource_history', 'seq'), $1)", max(tasks, 1)
        )
        index_rows = int(await conn.fetchval("SELECT count(*) FROM search_index"))
    finally:
        await conn.close()
    return LoadReport(
        tasks=tasks,
        owners=owners,
        index_rows=index_rows,
        seconds_copy=copied - started,
        seconds_index=indexed - copied,
        seconds_vacuum=analysed - indexed,
    )
