"""The same-work ceiling's capture and substitution (bench/capture.py, bench/replay.py).

Captures are built by hand here in the shapes the service sends (a read and its AuditEvent,
a poll, a write transaction); the last test records statements through the service's own
hook (``service.storage.driver``) as ``bench.capture`` does.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import bindparam, select

from bench.capture import Recorder
from bench.replay import (
    Captured,
    CaptureError,
    Sent,
    Template,
    build_template,
    compile_template,
    kept_values,
    render_params,
)

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
READ_SQL = "SELECT raw FROM resource WHERE resource_type = $1 AND id = $2"
AUDIT_SQL = "WITH v AS (SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[])) ..."


def _instant(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _read(
    rid: str, event_id: str, request_id: str, at: datetime, *, patient: str = "Patient/p-1"
) -> Captured:
    """A read as the service sends it: the Task by id, then its AuditEvent (autocommit)."""
    query = base64.b64encode(f"Task?_id={rid}".encode()).decode()
    raw = orjson.dumps(
        {
            "resourceType": "AuditEvent",
            "id": event_id,
            "meta": {"lastUpdated": _instant(at)},
            "recorded": _instant(at),
            "entity": [
                {"what": {"reference": f"Task/{rid}/_history/1"}},
                {"what": {"reference": patient}},
                {"query": query},
            ],
        }
    ).decode()
    audit = [
        ["AuditEvent"] * 3,
        [at, None, at + timedelta(microseconds=999)],
        [event_id, f"Task/{rid}", request_id],
        [raw],
        [patient],
    ]
    return Captured(
        statements=[
            Sent(READ_SQL, ["Task", rid], checkout=0, transaction=None),
            Sent(AUDIT_SQL, audit, checkout=1, transaction=None),
        ],
        ends={},
        tokens={"rid": rid},
        started=at - timedelta(milliseconds=3),
        ended=at + timedelta(milliseconds=5),
        status=200,
        response=b"",
    )


def _uuid(n: int) -> str:
    return f"01a24550-{n:04x}-7000-8000-{n:012x}"


RID = _uuid(1)
NOW = datetime.now(UTC).replace(microsecond=123_000)


def _pair() -> tuple[Captured, Captured]:
    later = NOW + timedelta(milliseconds=40)
    return (
        _read(RID, _uuid(100), "a" * 32, NOW),
        _read(RID, _uuid(200), "b" * 32, later),
    )


def test_a_replay_substitutes_the_request_fresh_ids_and_its_own_time() -> None:
    a, b = _pair()
    template = build_template("read", a, b)
    assert template.tokens == ["rid"]
    assert [kind for _, kind in template.generated] == ["uuid", "hex"]

    compiled = compile_template(template)
    other = _uuid(7)
    ctx = compiled.context({"rid": other})
    read, audit = (step.render(ctx) for step in compiled.steps)
    assert read == ["Task", other]
    types, times, values, (raw,), patients = audit
    event_id, reference, request_id = values
    # fresh ids, made as the service makes them: UUIDv7 (time-ordered) and 32 hex digits
    assert UUID7.match(event_id) and event_id not in (_uuid(100), _uuid(200))
    assert event_id[:8] == f"{int(ctx.base.timestamp() * 1000):012x}"[:8]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id) and request_id not in ("a" * 32, "b" * 32)
    assert reference == f"Task/{other}"
    # inside the JSON text: the new ids, the request's Task, its base64 query, the replay's time
    doc = orjson.loads(raw)
    assert doc["id"] == event_id
    assert doc["entity"][0]["what"]["reference"] == f"Task/{other}/_history/1"
    assert base64.b64decode(doc["entity"][2]["query"]).decode() == f"Task?_id={other}"
    offset = NOW - a.started.replace(microsecond=a.started.microsecond // 1000 * 1000)
    assert doc["recorded"] == _instant(ctx.base + offset)
    assert times == [ctx.base + offset, None, ctx.base + offset + timedelta(microseconds=999)]
    # what the request does not decide is replayed as captured
    assert types == ["AuditEvent"] * 3 and patients == ["Patient/p-1"]
    assert doc["entity"][1]["what"]["reference"] == "Patient/p-1"
    # two replays never write the same ids
    again = compiled.context({"rid": other})
    assert again.values["g0"] != ctx.values["g0"] and again.values["g1"] != ctx.values["g1"]


def test_the_template_reproduces_the_second_capture() -> None:
    a, b = _pair()
    template = build_template("read", a, b)
    ids = {"g0": _uuid(200), "g1": "b" * 32}
    base = b.started.replace(microsecond=b.started.microsecond // 1000 * 1000)
    assert render_params(template, {"rid": RID, **ids}, base=base) == [
        s.params for s in b.statements
    ]


def test_a_parameter_that_varies_for_no_known_reason_stops_the_capture() -> None:
    a, b = _pair()
    b.statements[1].params[4] = ["Patient/p-2"]  # not an id, not a token, not an instant
    with pytest.raises(CaptureError, match="does not reproduce"):
        build_template("read", a, b)
    a, b = _pair()
    b.statements.pop()
    with pytest.raises(CaptureError, match="different statements"):
        build_template("read", a, b)


def test_what_a_replay_keeps_from_the_captured_request_is_counted() -> None:
    a, b = _pair()
    template = build_template("read", a, b)
    c = _read(_uuid(3), _uuid(300), "c" * 32, NOW, patient="Patient/p-9")
    kept = kept_values(template, a, c)
    # the patient: once in the AuditEvent's JSON, once in its index row
    assert kept.kept == 2 and kept.reshaped == 0
    assert "Patient/p-1" in kept.examples[0] and "Patient/p-9" in kept.examples[0]
    same = _read(_uuid(3), _uuid(300), "c" * 32, NOW)
    assert kept_values(template, a, same).kept == 0


def _poll(owner: str, txid: int, seq: int, event_id: str, at: datetime) -> Captured:
    feed = [owner, "requested", txid, txid, seq, 51]
    return Captured(
        statements=[
            Sent("SELECT ... FEED", feed, checkout=0, transaction=None),
            Sent(AUDIT_SQL, [[event_id], [at], [f"owner={owner}"]], checkout=1, transaction=None),
        ],
        ends={},
        tokens={"owner": owner, "after_txid": txid, "after_seq": seq},
        started=at - timedelta(milliseconds=2),
        ended=at + timedelta(milliseconds=2),
        status=200,
        response=b"",
    )


def test_an_integer_token_replaces_only_the_places_it_comes_from() -> None:
    # The cursor position is 51, as is the page size + 1: only the cursor's place is a token,
    # as a poll from another position shows.
    a = _poll("Organization/o-1", 900, 51, _uuid(1), NOW)
    b = _poll("Organization/o-1", 900, 51, _uuid(2), NOW)
    c = _poll("Organization/o-2", 901, 77, _uuid(3), NOW)
    template = build_template("poll", a, b, other=c)
    (feed, audit) = render_params(
        template,
        {"owner": "Organization/o-3", "after_txid": 5, "after_seq": 6, "g0": _uuid(4)},
        base=NOW,
    )
    assert feed == ["Organization/o-3", "requested", 5, 5, 6, 51]
    assert audit[2] == ["owner=Organization/o-3"]
    assert kept_values(template, a, c).kept == 0


def test_a_transaction_begins_at_its_first_statement_and_ends_as_the_service_ended_it() -> None:
    def write(task_id: str, event_id: str) -> Captured:
        return Captured(
            statements=[
                Sent("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", ["k"], 0, 0),
                Sent("WITH v ... versions", [[task_id, event_id]], 0, 0),
                Sent("SELECT ... after", [task_id], 0, 0),
            ],
            ends={0: "commit"},
            tokens={},
            started=NOW,
            ended=NOW + timedelta(milliseconds=9),
            status=201,
            response=orjson.dumps({"id": task_id}),
        )

    template = build_template("create", write(_uuid(1), _uuid(2)), write(_uuid(3), _uuid(4)))
    # through JSON, as the ceiling gets it
    loaded = Template.from_dict(orjson.loads(orjson.dumps(template.to_dict())))
    compiled = compile_template(loaded)
    assert [(s.begins, s.ends, s.releases) for s in compiled.steps] == [
        (True, None, False),
        (False, None, False),
        (False, "commit", True),
    ]
    ctx = compiled.context({})
    assert compiled.response is not None
    task_id = orjson.loads(compiled.response(ctx))["id"]
    assert compiled.steps[1].render(ctx) == [[task_id, ctx.values["g1"]]]
    assert compiled.steps[2].render(ctx) == [task_id]


class _FakeAsyncpg:
    """Just enough of an asyncpg connection for ``service.storage.driver.driver_fetch``."""

    def __init__(self, in_transaction: bool) -> None:
        self.in_transaction = in_transaction

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    async def fetch(self, _sql: str, *_args: Any) -> list[Any]:
        return []


async def test_statements_on_the_driver_connection_are_recorded_with_their_connection() -> None:
    from service.storage import driver
    from service.storage.repository import resource_t

    stmt = select(resource_t.c.raw).where(resource_t.c.id == bindparam("rid"))
    recorder = Recorder(engine=None)  # type: ignore[arg-type]
    driver.statement_listeners.append(recorder._on_driver)
    try:
        recorder.start()
        outside, inside = _FakeAsyncpg(False), _FakeAsyncpg(True)
        await driver.driver_fetch(outside, stmt, {"rid": "t-1"})
        await driver.driver_fetch(inside, stmt, {"rid": "t-2"})
        await driver.driver_fetch(inside, stmt, {"rid": "t-3"})
        sent, _ends = recorder.stop()
    finally:
        driver.statement_listeners.remove(recorder._on_driver)
    assert [(s.params, s.checkout, s.transaction) for s in sent] == [
        (["t-1"], 0, None),
        (["t-2"], 1, 0),
        (["t-3"], 1, 0),
    ]
    assert "resource.id = $1" in sent[0].sql


class _Conn:
    def __init__(self, sent: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.sent = sent

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.sent.append((sql, args))
        return []


class _Pool:
    """Just enough of an asyncpg pool: records what each statement was sent with."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def acquire(self) -> Any:
        """Awaited or entered, as asyncpg's."""
        pool = self

        class _Acquired:
            def __await__(self) -> Any:
                return self.__aenter__().__await__()

            async def __aenter__(self) -> _Conn:
                return _Conn(pool.sent)

            async def __aexit__(self, *_exc: object) -> None:
                return None

        return _Acquired()

    async def release(self, _conn: Any) -> None:
        return None


def _audited(rid: str, event_id: str, at: datetime) -> Captured:
    captured = _read(rid, event_id, f"{event_id[-8:]:0>32}", at)
    captured.statements[1].grouped = True  # as the service's audit group commit sends it
    return captured


async def test_concurrent_replays_share_a_group_commit_as_the_service_does() -> None:
    import asyncio

    from bench.replay import GroupCommit, Replay

    a = _audited(RID, _uuid(100), NOW)
    b = _audited(RID, _uuid(200), NOW + timedelta(milliseconds=40))
    compiled = compile_template(build_template("read", a, b))
    assert "1 of them through the group commit" in compiled.template.notes[0]
    pool = _Pool()
    groups = GroupCommit(pool)

    async def one(rid: str) -> str:
        ctx = compiled.context({"rid": rid})
        replay = Replay(pool, ctx, groups)
        await replay.run(compiled.steps)
        await replay.close()
        return str(ctx.values["g0"])

    first = await one(_uuid(11))  # alone: a flush of one, at once
    rest = await asyncio.gather(*(one(_uuid(12 + i)) for i in range(3)))
    audits = [args for sql, args in pool.sent if sql == AUDIT_SQL]
    assert len(pool.sent) == 4 + 2 and len(audits) == 2 and groups.flushes == 2
    # the three concurrent ones in one statement: each array parameter, theirs end to end
    alone, merged = audits
    assert alone[2][0] == first and len(alone[0]) == 3
    assert [merged[2][3 * i] for i in range(3)] == rest and len(merged[0]) == 9
    assert merged[4] == ["Patient/p-1"] * 3
    # without the group commit, each replay sends its own
    pool.sent.clear()
    await Replay(pool, compiled.context({"rid": RID})).run(compiled.steps)
    assert [sql for sql, _ in pool.sent] == [READ_SQL, AUDIT_SQL]


def test_only_a_lone_statement_of_arrays_in_autocommit_can_be_grouped() -> None:
    a = _audited(RID, _uuid(100), NOW)
    b = _audited(RID, _uuid(200), NOW)
    for c in (a, b):
        c.statements[1].checkout = 0  # shares the read's checkout
    with pytest.raises(CaptureError, match="group commit"):
        build_template("read", a, b)


async def test_the_group_commits_statements_are_marked_as_such() -> None:
    import contextlib
    from collections.abc import AsyncIterator

    from service.storage import driver
    from service.storage.group_commit import GroupCommitter
    from service.storage.repository import resource_t

    stmt = select(resource_t.c.raw).where(resource_t.c.id == bindparam("rid"))
    conn = _FakeAsyncpg(False)

    @contextlib.asynccontextmanager
    async def connection(_engine: Any) -> AsyncIterator[Any]:
        yield conn

    async def flush(on: Any, items: Any) -> None:
        for item in items:
            await driver.driver_fetch(on, stmt, {"rid": item})

    committer: GroupCommitter[str] = GroupCommitter(None, flush, connection=connection)  # type: ignore[arg-type]
    recorder = Recorder(engine=None)  # type: ignore[arg-type]
    driver.statement_listeners.append(recorder._on_driver)
    try:
        recorder.start()
        await driver.driver_fetch(conn, stmt, {"rid": "read"})
        await committer.write("audit")
        sent, _ends = recorder.stop()
    finally:
        driver.statement_listeners.remove(recorder._on_driver)
    assert [(s.params, s.grouped) for s in sent] == [(["read"], False), (["audit"], True)]
