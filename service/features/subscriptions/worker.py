"""The notification delivery worker: matches committed changes against subscriptions and
delivers rest-hook notifications.

Two steps, each safe with any number of workers on one PostgreSQL (storage.subscriptions):

1. *Match* (one worker at a time, the feed cursor locked ``FOR UPDATE SKIP LOCKED``): the
   change feed (``resource_history`` in commit order, fenced like ``_cursor`` polling so that
   a late commit never falls behind the cursor) is read from the cursor; each change that a
   subscription's topic, filters and read access select becomes that subscription's next
   numbered event; the cursor moves in the same transaction. The release-imminent topic is
   matched by a periodic scan in the same step, which also marks follow-up Tasks whose window
   passed overdue (their new versions are changes the next round matches).
2. *Deliver* (per subscription, under a lease): a worker claims subscriptions with something
   to send, posts the handshake, the next events (at most ``max-count``) or a heartbeat, and
   records the outcome if it still holds the lease. A receiver that fails is retried with
   backoff; after ``HANDOFF_SUBSCRIPTION_MAX_FAILURES`` failures the subscription goes to
   ``error`` (the client reactivates it). Each subscription has its own lease and timeout, so a
   slow receiver delays nobody else.

The worker reads "as" the client that last wrote the subscription (its organization and the
scopes its token held then): what a notification names or carries passes that client's
tenancy, scopes and 42 CFR Part 2 disclosure at send time, and a full-resource notification
records the AuditEvent of what it disclosed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.auth.principal import Principal
from service.auth.scopes import ScopeSet
from service.errors import ResourceGoneError, ServiceError
from service.features import followups
from service.features.subscriptions import webhooks
from service.features.subscriptions.notifications import Shown, notification_bundle
from service.features.subscriptions.releases import imminent_referrals
from service.features.subscriptions.rules import SERVER_WRITE
from service.features.subscriptions.spec import Spec
from service.features.subscriptions.topics import TOPICS, matches
from service.features.subscriptions.webhooks import WebhookSpec
from service.fhir import exact_json
from service.search.execute import CURRENT_COLS, fence_condition
from service.settings import Settings
from service.storage import clients as client_store
from service.storage import repository as repo
from service.storage import subscriptions as store
from service.storage.db import read_connection, write_transaction
from service.storage.repository import history_t
from service.workflows import audit, resources
from service.workflows.access import access_filter, tenancy_filter
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet

log = logging.getLogger("handoff.subscriptions")

FEED_BATCH = 500
_METHODS = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}
WATCHED_TYPES = tuple(sorted({t.resource_type for t in TOPICS.values() if not t.scanned}))


def now() -> datetime:
    return datetime.now(UTC)


def subscriber_context(
    engine: AsyncEngine, settings: Settings, rules: RuleSet, state: store.State
) -> WorkflowContext:
    """The context a notification is read in: the subscribing client, its scopes at the time
    it wrote the subscription, its organization."""
    scopes = ScopeSet.parse(state.scopes)
    principal = Principal(
        client_id=state.client_id,
        organization=state.organization,
        scopes=scopes,
        is_admin=scopes.admin,
        token_id=None,
        issuer="handoff-subscriptions",
    )
    base_url = str(state.spec.get("base_url", ""))
    return WorkflowContext(
        engine=engine,
        settings=settings,
        base_url=base_url,
        request_id=f"notification-{uuid.uuid4()}",
        principal=principal,
        access=access_filter(principal, "r", base_url=base_url),
        search_access=access_filter(principal, "s", base_url=base_url),
        write_access=tenancy_filter(principal),
        rules=rules,
    )


def server_context(
    engine: AsyncEngine, settings: Settings, rules: RuleSet, state: store.State
) -> WorkflowContext:
    """The worker's own writes (a Subscription's status): no client, for its organization."""
    ctx = WorkflowContext(
        engine=engine,
        settings=settings,
        base_url=str(state.spec.get("base_url", "")),
        request_id=f"subscription-worker-{uuid.uuid4()}",
        rules=rules,
        on_behalf_of=state.organization,
    )
    ctx.outcomes[SERVER_WRITE] = True
    return ctx


async def write_status(
    conn: AsyncConnection,
    engine: AsyncEngine,
    settings: Settings,
    rules: RuleSet,
    state: store.State,
    status: str,
    error: str | None,
) -> None:
    """The Subscription resource's ``status`` (and ``error``) as the worker decided it."""
    current = await repo.get_current(conn, "Subscription", state.id, for_update=True)
    if current is None or current.deleted or current.raw is None:
        return
    body = exact_json.loads(current.raw)
    if body.get("status") == status and body.get("error") == error:
        return
    body["status"] = status
    if error:
        body["error"] = error[:1000]
    else:
        body.pop("error", None)
    ctx = server_context(engine, settings, rules, state)
    await resources.update_in(
        conn, ctx, "Subscription", state.id, body, if_match=current.version_id
    )


class Worker:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        rules: RuleSet,
        *,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.rules = rules
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.http = http or httpx.AsyncClient(follow_redirects=False)
        self._own_http = http is None
        self._slots = asyncio.Semaphore(settings.subscription_concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._last_purge: datetime | None = None
        self.rounds = 0
        self.last_ok: datetime | None = None  # the end of the last round that succeeded

    # --- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        log.info("notification worker %s started", self.owner)
        try:
            while not stop.is_set():
                try:
                    await self.step()
                    self.last_ok = now()
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception:  # a database outage: log, and try again next round
                    log.exception("notification worker round failed")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        _first(stop.wait(), self._wake.wait()),
                        timeout=self.settings.subscription_poll_seconds,
                    )
        finally:
            await self.settle()

    def healthy(self) -> bool:
        """A round succeeded lately (the probe of ``handoff worker``)."""
        window = timedelta(seconds=max(30.0, 10 * self.settings.subscription_poll_seconds))
        return self.last_ok is not None and now() - self.last_ok < window

    async def settle(self) -> None:
        """Let in-flight deliveries finish (at most the delivery timeout), then cancel the
        rest: their leases expire and another round sends them again."""
        if self._inflight:
            await asyncio.wait(
                list(self._inflight), timeout=self.settings.subscription_timeout_seconds
            )
        for task in list(self._inflight):
            task.cancel()

    async def close(self) -> None:
        await self.settle()
        if self._own_http:
            await self.http.aclose()

    async def step(self) -> None:
        """One round: match new changes, start due deliveries, purge expired events."""
        self.rounds += 1
        await self.match()
        await self.start_deliveries()
        await self.purge()

    async def drain(self, *, within: float = 20.0) -> None:
        """Run rounds until every committed change is matched and nothing is in flight, due or
        waiting for a retry (tests, the demo); heartbeats due later do not count."""
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            await self.step()
            if self._inflight:
                await asyncio.wait(list(self._inflight))
                continue
            async with read_connection(self.engine) as conn:
                due, retry = await store.next_due(conn)
                behind = await _feed_has_more(conn, await _position(conn), fenced=False)
            if behind or (due is not None and due <= now()):
                await asyncio.sleep(0.02)
            elif retry is not None:  # a failed delivery is tried again: wait for it
                left = deadline - asyncio.get_running_loop().time()
                await asyncio.sleep(min(left, max(0.0, (retry - now()).total_seconds())))
            else:
                return

    # --- step 1: match the change feed -----------------------------------------------------

    async def match(self) -> None:
        scan_due = False
        async with read_connection(self.engine) as conn:
            peek = (
                await conn.execute(
                    select(store.cursor_t.c.txid, store.cursor_t.c.seq, store.cursor_t.c.scanned_at)
                )
            ).first()
            position = (int(peek[0]), int(peek[1])) if peek else (-1, -1)
            scanned = peek[2] if peek else None
            scan_due = (
                scanned is None
                or scanned + timedelta(seconds=self.settings.subscription_release_scan_seconds)
                <= now()
            )
            if not scan_due and not await _feed_has_more(conn, position):
                return
        async with write_transaction(self.engine) as conn:
            locked = await store.lock_cursor(conn)
            if locked is None:
                return  # another worker is matching
            position = (locked[0], locked[1])
            subs = await store.listening(conn)
            rows = await _feed(conn, position, FEED_BATCH)
            if rows:
                await self._number_changes(conn, subs, rows)
                position = (int(rows[-1].txid), int(rows[-1].seq))
            scanned_at = None
            scanned = locked[2]
            if (
                scanned is None
                or scanned + timedelta(seconds=self.settings.subscription_release_scan_seconds)
                <= now()
            ):
                await self._scan_releases(conn, subs)
                await self._scan_overdue(conn)
                scanned_at = now()
            await store.move_cursor(conn, position, scanned_at=scanned_at)
        if rows and len(rows) == FEED_BATCH:
            self._wake.set()  # more to read

    async def _number_changes(
        self, conn: AsyncConnection, subs: list[store.State], rows: Sequence[Any]
    ) -> None:
        bodies: list[dict[str, Any] | None] = []
        for row in rows:
            if row.raw is not None:
                bodies.append(exact_json.loads(row.raw))
            else:  # a deletion: matched on the version it ends
                previous = await repo.get_version(
                    conn, row.resource_type, row.id, row.version_id - 1
                )
                bodies.append(exact_json.loads(previous.raw) if previous and previous.raw else None)
        hooks = [s for s in subs if s.kind == webhooks.KIND]
        if hooks:
            await self._number_referral_events(conn, hooks, rows, bodies)
        for sub in subs:
            if sub.kind != "fhir":
                continue
            spec = Spec.from_json(sub.spec)
            topic = TOPICS.get(spec.topic)
            if topic is None or topic.scanned:
                continue
            since = datetime.fromisoformat(sub.spec["since"])
            if spec.ended(now()):
                continue
            picked: list[tuple[Any, dict[str, Any]]] = []
            for row, body in zip(rows, bodies, strict=True):
                if body is None or row.resource_type != topic.resource_type:
                    continue
                if _METHODS.get(row.method) not in topic.triggers or row.last_updated < since:
                    continue
                if matches(topic, list(spec.filters), body, base_url=sub.spec.get("base_url")):
                    picked.append((row, body))
            if not picked:
                continue
            ctx = subscriber_context(self.engine, self.settings, self.rules, sub)
            seen = await repo.which_pass(
                conn,
                list({(r.resource_type, r.id) for r, _ in picked}),
                lambda rtype, ctx=ctx: ctx.access(rtype, CURRENT_COLS),  # type: ignore[misc]
            )
            events = [
                (r.last_updated, r.resource_type, r.id, int(r.version_id), _context_of(body), None)
                for r, body in picked
                if seen.get((r.resource_type, r.id), False)
            ]
            if events:
                await store.add_events(conn, sub.id, events)

    async def _number_referral_events(
        self,
        conn: AsyncConnection,
        hooks: list[store.State],
        rows: Sequence[Any],
        bodies: list[dict[str, Any] | None],
    ) -> None:
        """Webhook events: a referral Task a webhook's organization made was accepted,
        rejected or reached a milestone (compared with the version before it)."""
        changes: list[tuple[Any, dict[str, Any], str]] = []
        for row, body in zip(rows, bodies, strict=True):
            if row.resource_type != "Task" or row.raw is None or body is None:
                continue
            previous = None
            if int(row.version_id) > 1:
                before = await repo.get_version(conn, "Task", row.id, int(row.version_id) - 1)
                previous = exact_json.loads(before.raw) if before and before.raw else None
            kind = webhooks.event_of_change(previous, body)
            if kind is not None:
                changes.append((row, body, kind))
        if not changes:
            return
        for hook in hooks:
            spec = WebhookSpec.from_json(hook.spec)
            since = datetime.fromisoformat(hook.spec["since"])
            picked = [
                (row, body, kind)
                for row, body, kind in changes
                if spec.wants(kind)
                and webhooks.made_by(body, hook.organization)
                and row.last_updated >= since
            ]
            if not picked:
                continue
            ctx = subscriber_context(self.engine, self.settings, self.rules, hook)
            seen = await repo.which_pass(
                conn,
                list({("Task", r.id) for r, _, _ in picked}),
                lambda rtype, ctx=ctx: ctx.access(rtype, CURRENT_COLS),  # type: ignore[misc]
            )
            events = [
                (r.last_updated, "Task", r.id, int(r.version_id), _context_of(body), kind)
                for r, body, kind in picked
                if seen.get(("Task", r.id), False)
            ]
            if events:
                await store.add_events(conn, hook.id, events)

    async def _scan_releases(self, conn: AsyncConnection, subs: list[store.State]) -> None:
        imminent = webhooks.EVENT_TYPES["release-imminent"]
        for sub in subs:
            if sub.kind == webhooks.KIND:
                hook = WebhookSpec.from_json(sub.spec)
                if hook.wants(imminent):
                    await self._scan_for_webhook(conn, sub, hook.release_hours, imminent)
                continue
            spec = Spec.from_json(sub.spec)
            topic = TOPICS.get(spec.topic)
            if topic is None or not topic.scanned or spec.ended(now()):
                continue
            hours = int(next(v for f in spec.filters if f.name == "hours" for v in f.values))
            requesters = {v for f in spec.filters if f.name == "requester" for v in f.values}
            ctx = subscriber_context(self.engine, self.settings, self.rules, sub)
            ctx.audit = False  # a look-up, not a disclosure: what is sent is audited then
            found = await imminent_referrals(conn, ctx, hours=hours)
            events = []
            for task in found:
                requester = (task.get("requester") or {}).get("reference")
                if requesters and requester not in requesters:
                    continue
                if await store.has_event_for(conn, sub.id, "Task", task["id"]):
                    continue  # once per referral and subscription
                events.append(
                    (
                        now(),
                        "Task",
                        task["id"],
                        int(task["meta"]["versionId"]),
                        _context_of(task),
                        None,
                    )
                )
            if events:
                await store.add_events(conn, sub.id, events)

    async def _scan_overdue(self, conn: AsyncConnection) -> None:
        """Follow-up Tasks whose window passed without a contact that reached the person are
        marked overdue (features.followups), once each: the new Task versions are changes the
        next rounds match for the Task topic and ``follow-up-overdue`` webhooks. Under the
        feed cursor's lock (one worker at a time); each mark in its own savepoint, so one Task
        that cannot be marked delays neither the others nor the feed."""
        t = now()
        ctx = WorkflowContext(
            engine=self.engine,
            settings=self.settings,
            base_url="",
            request_id=f"follow-up-scan-{uuid.uuid4()}",
            rules=self.rules,
        )
        for task_id in await followups.overdue_candidates(conn, t):
            try:
                async with conn.begin_nested():
                    await followups.mark_overdue(conn, ctx, task_id, t)
            except ServiceError:
                log.exception("follow-up Task %s could not be marked overdue", task_id)

    async def _scan_for_webhook(
        self, conn: AsyncConnection, sub: store.State, hours: int, kind: str
    ) -> None:
        ctx = subscriber_context(self.engine, self.settings, self.rules, sub)
        ctx.audit = False  # a look-up, not a disclosure: what is sent is audited then
        events = []
        for task in await imminent_referrals(conn, ctx, hours=hours):
            if await store.has_event_for(conn, sub.id, "Task", task["id"], kind):
                continue  # once per referral and webhook
            version = int(task["meta"]["versionId"])
            events.append((now(), "Task", task["id"], version, _context_of(task), kind))
        if events:
            await store.add_events(conn, sub.id, events)

    # --- step 2: deliver --------------------------------------------------------------------

    async def start_deliveries(self) -> None:
        free = self.settings.subscription_concurrency - len(self._inflight)
        if free <= 0:
            return
        hold = timedelta(
            seconds=self.settings.subscription_timeout_seconds
            + self.settings.subscription_lease_seconds
        )
        async with read_connection(self.engine) as conn:
            if not await store.any_due(conn, now()):
                return
        async with write_transaction(self.engine) as conn:
            claimed = await store.claim_due(
                conn, owner=self.owner, now=now(), hold=hold, limit=free
            )
        for state in claimed:
            task = asyncio.create_task(self._deliver_guarded(state))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _deliver_guarded(self, state: store.State) -> None:
        try:
            await self.deliver(state)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery to subscription %s failed", state.id)

    async def deliver(self, state: store.State) -> None:
        async with read_connection(self.engine) as conn:
            active_client = await client_store.is_active(conn, state.client_id)
        if not active_client:
            await self._finish(
                state,
                ok=False,
                error=f"The subscribing client {state.client_id} is disabled or removed: "
                "notifications stopped",
                final=True,
            )
            return
        if state.kind == webhooks.KIND:
            await self._deliver_webhook(state)
            return
        spec = Spec.from_json(state.spec)
        base_url = str(state.spec.get("base_url", ""))
        kind = "heartbeat"
        events: list[store.Event] = []
        if state.status == "requested":
            kind = "handshake"
        elif state.delivered_through < state.events_count:
            kind = "event-notification"
            async with read_connection(self.engine) as conn:
                events = await store.events_between(
                    conn,
                    state.id,
                    after=state.delivered_through,
                    through=state.events_count,
                    limit=spec.max_count,
                )
            if not events:  # purged past their retention: nothing left to send
                await self._finish(state, ok=True, through=state.events_count, sent=False)
                return
        ctx = subscriber_context(self.engine, self.settings, self.rules, state)
        ctx.audit_notes.interaction = "vread"
        shown = await show_events(ctx, spec.content, events)
        body = notification_bundle(
            base_url=base_url,
            subscription_id=state.id,
            topic=spec.topic,
            status="requested" if kind == "handshake" else state.status,
            kind=kind,
            events_since_start=state.events_count
            if kind != "event-notification"
            else events[-1].event_number,
            events=shown,
            content=spec.content,
        )
        headers = {"Content-Type": spec.payload, **dict(spec.headers)}
        error, _status = await self._post(spec.endpoint, orjson.dumps(body), headers, spec.timeout)
        if ctx.accessed:  # what left for the receiver is a disclosure, answered or not
            await audit.finish_request(ctx, error=None)
        if error is None:
            await self._finish(
                state,
                ok=True,
                through=events[-1].event_number if events else state.delivered_through,
                activate=kind == "handshake",
            )
        else:
            await self._finish(state, ok=False, error=error, final=kind == "handshake")

    async def _deliver_webhook(self, state: store.State) -> None:
        """The next event of a webhook, one per message (Standard Webhooks)."""
        spec = WebhookSpec.from_json(state.spec)
        async with read_connection(self.engine) as conn:
            found = await store.events_between(
                conn,
                state.id,
                after=state.delivered_through,
                through=state.events_count,
                limit=1,
            )
        if not found:  # nothing to send (or purged past its retention)
            await self._finish(state, ok=True, through=state.events_count, sent=False)
            return
        [event] = found
        ctx = subscriber_context(self.engine, self.settings, self.rules, state)
        ctx.audit_notes.interaction = "vread"
        async with read_connection(self.engine) as conn:
            task = await webhooks.shown_task(conn, ctx, event)
        body = webhooks.encode(webhooks.message(spec, state.id, event, task))
        headers = webhooks.signed(
            spec, webhooks.message_id(state.id, event.event_number), body, now()
        )
        error, status = await self._post(spec.url, body, headers, spec.timeout)
        final = status == 410  # Standard Webhooks: the receiver is gone
        if final:
            error = "The endpoint answered HTTP 410 Gone: delivery stopped"
        if ctx.accessed:  # what left for the receiver is a disclosure, answered or not
            await audit.finish_request(ctx, error=None)
        if error is None:
            await self._finish(state, ok=True, through=event.event_number)
        else:
            await self._finish(state, ok=False, error=error, final=final)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], wait: float
    ) -> tuple[str | None, int | None]:
        """POST one notification: why it failed (None: a 2xx) and the status answered."""
        try:
            response = await self.http.post(url, content=body, headers=headers, timeout=wait)
        except httpx.TimeoutException:
            return f"The endpoint did not answer within {wait:g} s", None
        except httpx.HTTPError as exc:
            return f"The endpoint could not be reached ({type(exc).__name__})", None
        if not 200 <= response.status_code < 300:
            return f"The endpoint answered HTTP {response.status_code}", response.status_code
        return None, response.status_code

    async def _finish(
        self,
        state: store.State,
        *,
        ok: bool,
        through: int | None = None,
        activate: bool = False,
        error: str | None = None,
        final: bool = False,
        sent: bool = True,
    ) -> None:
        t = now()
        heartbeat = None if state.kind == webhooks.KIND else Spec.from_json(state.spec).heartbeat
        idle = timedelta(seconds=heartbeat) if heartbeat else store.IDLE
        async with write_transaction(self.engine) as conn:
            if ok:
                values: dict[str, Any] = {
                    "failures": 0,
                    "delivered_through": through
                    if through is not None
                    else state.delivered_through,
                    "next_attempt_at": t + idle,
                    "last_error": None,
                }
                if sent:
                    values["last_sent_at"] = t
                if activate:
                    values["status"] = "active"
                done = await store.finish_delivery(conn, state, owner=self.owner, values=values)
                if done is not None and activate:
                    await write_status(
                        conn, self.engine, self.settings, self.rules, state, "active", None
                    )
                return
            failures = state.failures + 1
            gives_up = final or failures >= self.settings.subscription_max_failures
            delay = min(
                self.settings.subscription_retry_seconds * 2 ** (failures - 1),
                self.settings.subscription_retry_max_seconds,
            )
            values = {
                "failures": failures,
                "next_attempt_at": t + timedelta(seconds=delay),
                "last_error": error,
            }
            if gives_up:
                values["status"] = "error"
            done = await store.finish_delivery(conn, state, owner=self.owner, values=values)
            if done is not None and gives_up:
                log.warning("subscription %s is in error: %s", state.id, error)
                await write_status(
                    conn, self.engine, self.settings, self.rules, state, "error", error
                )

    async def purge(self) -> None:
        t = now()
        if self._last_purge is not None and t - self._last_purge < timedelta(minutes=5):
            return
        self._last_purge = t
        before = t - timedelta(hours=self.settings.subscription_event_retention_hours)
        async with write_transaction(self.engine) as conn:
            await store.purge_events(conn, before)


async def show_events(ctx: WorkflowContext, content: str, events: list[store.Event]) -> list[Shown]:
    """Each event as ``ctx``'s client may see it now (consent revoked since the change: the
    notification names and carries nothing the subscriber may no longer see). Full resources
    pass the disclosure policy and are noted in ``ctx.accessed`` for the AuditEvent."""
    if not events:
        return []
    out: list[Shown] = []
    async with read_connection(ctx.engine) as conn:
        visible = await repo.which_pass(
            conn,
            list({(e.focus_type, e.focus_id) for e in events}),
            lambda rtype: ctx.access(rtype, CURRENT_COLS),
        )
        for e in events:
            focus: str | None = f"{e.focus_type}/{e.focus_id}"
            if content == "empty" or not visible.get((e.focus_type, e.focus_id), False):
                out.append(Shown(e.event_number, e.recorded, None))
                continue
            version = await repo.get_version(conn, e.focus_type, e.focus_id, e.focus_version)
            deleted = version is None or version.deleted
            method = "DELETE" if deleted else ("POST" if e.focus_version == 1 else "PUT")
            resource: dict[str, Any] | None = None
            if content == "full-resource" and not deleted:
                try:
                    stored = await resources.vread_in(
                        conn, ctx, e.focus_type, e.focus_id, str(e.focus_version)
                    )
                    resource = resources.loads(stored)
                except ResourceGoneError:
                    method = "DELETE"
                except ServiceError:
                    focus = None
            context = [c for c in (e.context or []) if await _may_see(conn, ctx, c)]
            out.append(Shown(e.event_number, e.recorded, focus, method, resource, context))
    return out


async def _may_see(conn: AsyncConnection, ctx: WorkflowContext, reference: str) -> bool:
    rtype, _, rid = reference.partition("/")
    seen = await repo.which_pass(conn, [(rtype, rid)], lambda t: ctx.access(t, CURRENT_COLS))
    return seen.get((rtype, rid), False)


def _context_of(body: dict[str, Any]) -> list[str] | None:
    """A Task's referral (``focus``) as the notification's additional context."""
    if body.get("resourceType") != "Task":
        return None
    ref = (body.get("focus") or {}).get("reference")
    if isinstance(ref, str) and ref.count("/") == 1 and "://" not in ref:
        return [ref]
    return None


async def _position(conn: AsyncConnection) -> tuple[int, int]:
    row = (await conn.execute(select(store.cursor_t.c.txid, store.cursor_t.c.seq))).first()
    return (int(row[0]), int(row[1])) if row else (-1, -1)


async def _feed(
    conn: AsyncConnection, after: tuple[int, int], limit: int, *, fenced: bool = True
) -> Sequence[Any]:
    h = history_t.c
    stmt = (
        select(h.resource_type, h.id, h.version_id, h.last_updated, h.method, h.raw, h.txid, h.seq)
        .where(
            h.resource_type.in_(WATCHED_TYPES),
            tuple_(h.txid, h.seq) > tuple_(*after),
            fence_condition(conn.dialect.name, h.txid) if fenced else true(),
        )
        .order_by(h.txid, h.seq)
        .limit(limit)
    )
    return (await conn.execute(stmt)).all()


async def _feed_has_more(
    conn: AsyncConnection, after: tuple[int, int], *, fenced: bool = True
) -> bool:
    return bool(await _feed(conn, after, 1, fenced=fenced))


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


class Running:
    """A worker running as a task of this process (``handoff serve``, ``handoff worker``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(worker.run(self.stopping))

    async def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.worker.close()


def run_in_background(engine: AsyncEngine, settings: Settings, rules: RuleSet) -> Running:
    return Running(Worker(engine, settings, rules))
