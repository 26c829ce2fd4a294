"""What the service sends to PostgreSQL for one request, captured from the service itself.

The service runs in this process (``service.app.create_app`` on the benchmark's database,
with the benchmarked service's settings), driven through ASGI one request at a time. Every
statement it sends is recorded from the two places statements leave it, as the project's own
statement-counting tests record them (``tests/statements.py``):

* SQLAlchemy's ``before_cursor_execute`` event: the SQL and its positional parameters after
  bind processing, and the connection (autocommit or in a transaction);
* ``service.storage.driver.statement_listeners``: the hottest statements, sent on the asyncpg
  connection itself (reads by id, the feed, writes of versions, the audit group commit). The
  hook passes SQL and arguments; the asyncpg connection is read from the caller's frame
  (``driver._run``'s ``driver``), to know its checkout and whether it is in a transaction, and
  a statement sent by a flush of the service's group commit (``GroupCommitter`` up the chain
  of awaiting coroutines) is marked so: the same-work ceiling merges those of concurrent
  requests as the service does (``bench.replay.GroupCommit``).

Connection checkouts come from the pool's ``checkout``/``checkin`` events, transaction ends from
SQLAlchemy's ``commit``/``rollback`` events. Each kind of request is sent a few times first
(caches: the client's status, prepared statements), then twice as the same request, which
makes and checks its template (``bench.replay.build_template``), then once as a different
request, which measures what the replay keeps as captured (``bench.replay.kept_values``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.replay import Captured, CaptureError, Kept, Sent, Template, build_template, kept_values

BASE = "http://testserver"


@dataclass(frozen=True)
class Probe:
    """One request to capture, and its request tokens (see ``bench.replay``)."""

    method: str
    path: str
    body: bytes | None = None
    client: str = "bench-admin"
    tokens: dict[str, Any] = field(default_factory=dict)
    content_type: str = "application/fhir+json"


@dataclass(frozen=True)
class Plan:
    """How to capture one template: ``first`` and ``again`` are the same request (``again``
    with other request tokens where a request may not repeat, e.g. a referral number),
    ``other`` a different one of the same kind."""

    name: str
    warmup: Sequence[Probe]
    first: Probe
    again: Probe
    other: Probe | None = None
    expect: int = 200
    answer: bool = False  # keep the service's answer as the template's response (writes)
    page: bool = False  # a search: the template is for pages of its first capture's size


@dataclass
class Captures:
    templates: dict[str, Template]
    kept: dict[str, Kept | None]

    def to_json(self) -> bytes:
        return orjson.dumps({"templates": {k: t.to_dict() for k, t in self.templates.items()}})


class Recorder:
    """Records the statements an engine sends while ``recording``."""

    def __init__(self, engine: AsyncEngine) -> None:
        from service.storage import driver

        self.engine = engine
        self.driver_module = driver
        self.recording = False
        self._reset()

    def _reset(self) -> None:
        self.sent: list[Sent] = []
        self.ends: dict[int, str] = {}
        self.checkouts: dict[int, int] = {}  # id(asyncpg connection) -> checkout number
        self.open_tx: dict[int, int] = {}  # checkout -> its open transaction's number
        self.n_checkouts = 0
        self.n_transactions = 0

    def install(self) -> None:
        sync = self.engine.sync_engine
        event.listen(sync, "checkout", self._checkout)
        event.listen(sync, "checkin", self._checkin)
        event.listen(sync, "commit", self._commit)
        event.listen(sync, "rollback", self._rollback)
        event.listen(sync, "before_cursor_execute", self._through_sqlalchemy)
        self.driver_module.statement_listeners.append(self._on_driver)

    def remove(self) -> None:
        sync = self.engine.sync_engine
        event.remove(sync, "checkout", self._checkout)
        event.remove(sync, "checkin", self._checkin)
        event.remove(sync, "commit", self._commit)
        event.remove(sync, "rollback", self._rollback)
        event.remove(sync, "before_cursor_execute", self._through_sqlalchemy)
        self.driver_module.statement_listeners.remove(self._on_driver)

    def start(self) -> None:
        self._reset()
        self.recording = True

    def stop(self) -> tuple[list[Sent], dict[int, str]]:
        self.recording = False
        for transaction in self.open_tx.values():
            self.ends.setdefault(transaction, "open")
        return self.sent, self.ends

    # -- where a statement runs

    def _checkout_of(self, driver: Any) -> int:
        key = id(driver)
        number = self.checkouts.get(key)
        if number is None:
            number = self.checkouts[key] = self.n_checkouts
            self.n_checkouts += 1
        return number

    def _record(self, driver: Any, in_tx: bool, sql: str, params: Any, many: bool) -> None:
        checkout = self._checkout_of(driver)
        transaction = None
        if in_tx:
            transaction = self.open_tx.get(checkout)
            if transaction is None:
                transaction = self.open_tx[checkout] = self.n_transactions
                self.n_transactions += 1
        values = [list(p) for p in params] if many else list(params or ())
        self.sent.append(Sent(sql, values, checkout, transaction, many))

    def _end(self, conn: Any, how: str) -> None:
        if not self.recording:
            return
        checkout = self.checkouts.get(id(conn.connection.driver_connection))
        transaction = self.open_tx.pop(checkout, None) if checkout is not None else None
        if transaction is not None:
            self.ends[transaction] = how

    # -- event handlers

    def _checkout(self, _dbapi: Any, record: Any, _proxy: Any) -> None:
        if self.recording:
            self._checkout_of(record.driver_connection)

    def _checkin(self, _dbapi: Any, record: Any) -> None:
        if not self.recording or record.driver_connection is None:
            return
        checkout = self.checkouts.pop(id(record.driver_connection), None)
        transaction = self.open_tx.pop(checkout, None) if checkout is not None else None
        if transaction is not None:
            self.ends[transaction] = "rollback"  # reset on return

    def _commit(self, conn: Any) -> None:
        self._end(conn, "commit")

    def _rollback(self, conn: Any) -> None:
        self._end(conn, "rollback")

    def _through_sqlalchemy(
        self, conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool
    ) -> None:
        if not self.recording:
            return
        fairy = conn.connection
        in_tx = not getattr(fairy.dbapi_connection, "autocommit", False)
        self._record(fairy.driver_connection, in_tx, statement, parameters, many)

    def _on_driver(self, sql: str, args: Sequence[Any]) -> None:
        if not self.recording:
            return
        caller = sys._getframe(1)
        driver = caller.f_locals.get("driver")
        if driver is None or not hasattr(driver, "is_in_transaction"):
            raise CaptureError(
                "service.storage.driver's statement listener was called from "
                f"{caller.f_code.co_name}, which holds no asyncpg connection named 'driver': "
                "bench.capture must learn where the connection is now"
            )
        self._record(driver, driver.is_in_transaction(), sql, args, False)
        self.sent[-1].grouped = _in_group_commit(caller)


def _in_group_commit(frame: Any) -> bool:
    """Whether ``frame`` runs inside a flush of the service's group commit (its caller chain,
    through the awaiting coroutines, reaches ``GroupCommitter._drain``)."""
    from service.storage.group_commit import GroupCommitter

    while frame is not None:
        if isinstance(frame.f_locals.get("self"), GroupCommitter):
            return True
        frame = frame.f_back
    return False


def _settings(dsn: str) -> Any:
    """The benchmarked service's settings (``bench.run.service_settings``), in this process."""
    from bench.run import service_settings
    from service.settings import Settings

    env = service_settings(dsn)
    return Settings(  # type: ignore[call-arg]
        database_url=env["HANDOFF_DATABASE_URL"],
        log_level=env["HANDOFF_LOG_LEVEL"],
        auto_migrate=env["HANDOFF_AUTO_MIGRATE"] == "true",
        demo=env["HANDOFF_DEMO"] == "true",
        max_concurrent_per_client=int(env["HANDOFF_MAX_CONCURRENT_PER_CLIENT"]),
        subscription_worker=env["HANDOFF_SUBSCRIPTION_WORKER"] == "true",
        gc_gen0_threshold=0,  # leave this process's garbage collector alone
        _env_file=None,
    )


async def _send(client: httpx.AsyncClient, tokens: Any, probe: Probe) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tokens.issue(BASE, probe.client)}"}
    if probe.body is not None:
        headers["Content-Type"] = probe.content_type
    return await client.request(probe.method, probe.path, content=probe.body, headers=headers)


async def _capture(
    client: httpx.AsyncClient, recorder: Recorder, tokens: Any, probe: Probe, plan: Plan
) -> Captured:
    recorder.start()
    started = datetime.now(UTC)
    try:
        response = await _send(client, tokens, probe)
    finally:
        ended = datetime.now(UTC)
        statements, ends = recorder.stop()
    if response.status_code != plan.expect:
        raise CaptureError(
            f"{plan.name}: the service answered {probe.method} {probe.path} with "
            f"{response.status_code}, not {plan.expect}: {response.text[:500]}"
        )
    if not statements:
        raise CaptureError(f"{plan.name}: the service sent no statement")
    return Captured(
        statements=statements,
        ends=ends,
        tokens=dict(probe.tokens),
        started=started,
        ended=ended,
        status=response.status_code,
        response=response.content if plan.answer else b"",
    )


def _page(body: bytes) -> int:
    return len(orjson.loads(body).get("entry", []))


async def capture_async(dsn: str, tokens: Any, plans: Sequence[Plan]) -> Captures:
    from service.app import create_app

    app = create_app(_settings(dsn))
    templates: dict[str, Template] = {}
    kept: dict[str, Kept | None] = {}
    async with app.router.lifespan_context(app):
        recorder = Recorder(app.state.engine)
        recorder.install()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                for plan in plans:
                    for probe in plan.warmup:
                        warm = await _send(client, tokens, probe)
                        if warm.status_code != plan.expect:
                            raise CaptureError(
                                f"{plan.name}: warm-up answered {warm.status_code}: "
                                f"{warm.text[:500]}"
                            )
                    a = await _capture(client, recorder, tokens, plan.first, plan)
                    b = await _capture(client, recorder, tokens, plan.again, plan)
                    c = (
                        await _capture(client, recorder, tokens, plan.other, plan)
                        if plan.other is not None
                        else None
                    )
                    page = None
                    if plan.page:
                        # the answer is not kept (the ceiling builds pages); ask once more
                        page = _page((await _send(client, tokens, plan.first)).content)
                    template = build_template(plan.name, a, b, other=c, page=page)
                    templates[plan.name] = template
                    kept[plan.name] = kept_values(template, a, c) if c is not None else None
        finally:
            recorder.remove()
    return Captures(templates, kept)


def capture(dsn: str, tokens: Any, plans: Sequence[Plan]) -> Captures:
    """Templates of the benchmark's requests, captured from the service on ``dsn``."""
    return asyncio.run(capture_async(dsn, tokens, plans))
