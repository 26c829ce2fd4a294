"""Queries of notification delivery: subscription state and leases, numbered events, the
change-feed cursor (tables in storage.tables).

Concurrency (several worker processes on one PostgreSQL):

* the change feed is matched by one worker at a time: the cursor row is locked
  ``FOR UPDATE SKIP LOCKED`` (others skip the round), and events are numbered and the cursor
  advanced in the same transaction, so an event is numbered once, gap-free, or not at all;
* each subscription is delivered by the worker holding its lease (``lease_owner``,
  ``lease_until``), claimed with ``FOR UPDATE SKIP LOCKED``: a slow receiver holds only its own
  lease, and a worker that dies mid-delivery loses the lease when it expires, so another
  worker sends the same events again (nothing is acknowledged before the receiver's 2xx).

On SQLite (one process, one writer) ``FOR UPDATE SKIP LOCKED`` is left out by SQLAlchemy and
the write lock serializes the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage.tables import subscription_cursor, subscription_event, subscription_state

state_t = subscription_state
event_t = subscription_event
cursor_t = subscription_cursor

FEED = "feed"
# "Not before anything happens": the next look at a subscription with nothing to send and no
# heartbeat (a new event makes it due whatever this says).
IDLE = timedelta(days=3650)


@dataclass(frozen=True)
class State:
    id: str
    kind: str
    organization: str | None
    client_id: str
    scopes: str
    spec: dict[str, Any]
    status: str
    generation: int
    events_count: int
    delivered_through: int
    failures: int
    next_attempt_at: datetime
    last_sent_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    last_error: str | None


def _state(row: Any) -> State:
    return State(**dict(row._mapping))


@dataclass(frozen=True)
class Event:
    subscription_id: str
    event_number: int
    recorded: datetime
    focus_type: str
    focus_id: str
    focus_version: int
    context: list[str] | None
    event_type: str | None  # a webhook's kind of event (referral.accepted, ...)


def _event(row: Any) -> Event:
    return Event(**dict(row._mapping))


async def get_state(conn: AsyncConnection, sid: str, *, for_update: bool = False) -> State | None:
    stmt = select(state_t).where(state_t.c.id == sid)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return _state(row) if row else None


async def states(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, State]:
    if not ids:
        return {}
    rows = await conn.execute(select(state_t).where(state_t.c.id.in_(list(ids))))
    return {r.id: _state(r) for r in rows}


async def save_client_write(
    conn: AsyncConnection,
    *,
    sid: str,
    kind: str,
    organization: str | None,
    client_id: str,
    scopes: str,
    spec: dict[str, Any],
    status: str,
    now: datetime,
) -> State:
    """A client created or changed a subscription: its new configuration, and (for
    ``requested``) a handshake due now. Events missed while it was in error are not resent
    (the client recovers them with $events): delivery resumes after the last event numbered."""
    current = await get_state(conn, sid, for_update=True)
    values = {
        "kind": kind,
        "organization": organization,
        "client_id": client_id,
        "scopes": scopes,
        "spec": spec,
        "status": status,
        "failures": 0,
        "next_attempt_at": now,
        "last_error": None,
    }
    if current is None:
        await conn.execute(
            insert(state_t).values(
                id=sid,
                generation=1,
                events_count=0,
                delivered_through=0,
                last_sent_at=None,
                lease_owner=None,
                lease_until=None,
                **values,
            )
        )
    else:
        await conn.execute(
            update(state_t)
            .where(state_t.c.id == sid)
            .values(
                generation=current.generation + 1,
                delivered_through=current.events_count,
                **values,
            )
        )
    found = await get_state(conn, sid)
    assert found is not None
    return found


async def of_kind(conn: AsyncConnection, kind: str, organization: str | None) -> list[State]:
    """The ``kind`` subscriptions of ``organization`` (None: every organization's)."""
    stmt = select(state_t).where(state_t.c.kind == kind)
    if organization is not None:
        stmt = stmt.where(state_t.c.organization == organization)
    rows = await conn.execute(stmt.order_by(state_t.c.id))
    return [_state(r) for r in rows]


async def drop_state(conn: AsyncConnection, sid: str) -> None:
    await conn.execute(delete(event_t).where(event_t.c.subscription_id == sid))
    await conn.execute(delete(state_t).where(state_t.c.id == sid))


async def set_status(
    conn: AsyncConnection,
    sid: str,
    *,
    status: str,
    error: str | None,
    now: datetime,
) -> None:
    await conn.execute(
        update(state_t)
        .where(state_t.c.id == sid)
        .values(
            status=status,
            last_error=error,
            failures=0,
            next_attempt_at=now,
            lease_owner=None,
            lease_until=None,
        )
    )


# --- the change feed --------------------------------------------------------------------------


async def lock_cursor(conn: AsyncConnection) -> tuple[int, int, datetime | None] | None:
    """The feed position, locked for this transaction; None when another worker holds it."""
    stmt = (
        select(cursor_t.c.txid, cursor_t.c.seq, cursor_t.c.scanned_at)
        .where(cursor_t.c.name == FEED)
        .with_for_update(skip_locked=True)
    )
    row = (await conn.execute(stmt)).first()
    if row is not None:
        return int(row[0]), int(row[1]), row[2]
    exists = (await conn.execute(select(cursor_t.c.name).where(cursor_t.c.name == FEED))).first()
    if exists is not None:
        return None  # locked by another worker
    return None if not await _create_cursor(conn) else (-1, -1, None)


async def _create_cursor(conn: AsyncConnection) -> bool:
    from sqlalchemy.exc import IntegrityError

    try:
        async with conn.begin_nested():
            await conn.execute(insert(cursor_t).values(name=FEED, txid=-1, seq=-1))
    except IntegrityError:
        return False
    return True


async def move_cursor(
    conn: AsyncConnection,
    position: tuple[int, int],
    *,
    scanned_at: datetime | None = None,
) -> None:
    values: dict[str, Any] = {"txid": position[0], "seq": position[1]}
    if scanned_at is not None:
        values["scanned_at"] = scanned_at
    await conn.execute(update(cursor_t).where(cursor_t.c.name == FEED).values(**values))


async def listening(conn: AsyncConnection) -> list[State]:
    """Subscriptions that number events (all but ``off``)."""
    rows = await conn.execute(select(state_t).where(state_t.c.status != "off"))
    return [_state(r) for r in rows]


async def add_events(
    conn: AsyncConnection,
    sid: str,
    events: Sequence[tuple[datetime, str, str, int, list[str] | None, str | None]],
) -> int:
    """Number ``events`` (recorded, focus type, id, version, context, event type) after the
    subscription's last; returns the new count."""
    row = (
        await conn.execute(
            update(state_t)
            .where(state_t.c.id == sid)
            .values(events_count=state_t.c.events_count + len(events))
            .returning(state_t.c.events_count)
        )
    ).first()
    assert row is not None
    last = int(row[0])
    first = last - len(events) + 1
    await conn.execute(
        insert(event_t),
        [
            {
                "subscription_id": sid,
                "event_number": first + i,
                "recorded": recorded,
                "focus_type": rtype,
                "focus_id": rid,
                "focus_version": version,
                "context": context,
                "event_type": event_type,
            }
            for i, (recorded, rtype, rid, version, context, event_type) in enumerate(events)
        ],
    )
    return last


async def has_event_for(
    conn: AsyncConnection, sid: str, focus_type: str, focus_id: str, event_type: str | None = None
) -> bool:
    stmt = select(event_t.c.event_number).where(
        event_t.c.subscription_id == sid,
        event_t.c.focus_type == focus_type,
        event_t.c.focus_id == focus_id,
    )
    if event_type is not None:
        stmt = stmt.where(event_t.c.event_type == event_type)
    row = (await conn.execute(stmt.limit(1))).first()
    return row is not None


async def events_between(
    conn: AsyncConnection, sid: str, *, after: int, through: int, limit: int
) -> list[Event]:
    rows = await conn.execute(
        select(event_t)
        .where(
            event_t.c.subscription_id == sid,
            event_t.c.event_number > after,
            event_t.c.event_number <= through,
        )
        .order_by(event_t.c.event_number)
        .limit(limit)
    )
    return [_event(r) for r in rows]


async def purge_events(conn: AsyncConnection, before: datetime, *, limit: int = 5000) -> int:
    ids = select(event_t.c.subscription_id, event_t.c.event_number).where(
        event_t.c.recorded < before
    )
    rows = (await conn.execute(ids.limit(limit))).all()
    if not rows:
        return 0
    for sid, number in rows:
        await conn.execute(
            delete(event_t).where(
                event_t.c.subscription_id == sid, event_t.c.event_number == number
            )
        )
    return len(rows)


# --- delivery leases ---------------------------------------------------------------------------


async def claim_due(
    conn: AsyncConnection, *, owner: str, now: datetime, hold: timedelta, limit: int
) -> list[State]:
    """Up to ``limit`` subscriptions with something to send (a handshake, events, a heartbeat,
    a retry that is due) and no live lease, leased to ``owner`` until ``now + hold``."""
    due = (
        select(state_t.c.id)
        .where(*_due(now))
        .order_by(state_t.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r[0] for r in await conn.execute(due)]
    if not ids:
        return []
    await conn.execute(
        update(state_t)
        .where(state_t.c.id.in_(ids))
        .values(lease_owner=owner, lease_until=now + hold)
    )
    rows = await conn.execute(select(state_t).where(state_t.c.id.in_(ids)))
    return [_state(r) for r in rows]


async def any_due(conn: AsyncConnection, now: datetime) -> bool:
    """Whether ``claim_due`` would find anything (a read: no lock taken when idle)."""
    return (await conn.execute(select(state_t.c.id).where(*_due(now)).limit(1))).first() is not None


def _due(now: datetime) -> list[Any]:
    return [
        state_t.c.status.in_(("requested", "active")),
        or_(state_t.c.lease_until.is_(None), state_t.c.lease_until < now),
        or_(
            state_t.c.next_attempt_at <= now,
            and_(
                state_t.c.failures == 0,
                state_t.c.status == "active",
                state_t.c.delivered_through < state_t.c.events_count,
            ),
        ),
    ]


async def finish_delivery(
    conn: AsyncConnection,
    claimed: State,
    *,
    owner: str,
    values: dict[str, Any],
) -> State | None:
    """Record a delivery's outcome if ``owner`` still holds the lease of the same generation
    (a client's change in between wins); releases the lease. None: the lease was lost."""
    current = await get_state(conn, claimed.id, for_update=True)
    if current is None or current.lease_owner != owner or current.generation != claimed.generation:
        return None
    await conn.execute(
        update(state_t)
        .where(state_t.c.id == claimed.id)
        .values(lease_owner=None, lease_until=None, **values)
    )
    return await get_state(conn, claimed.id)


async def next_due(conn: AsyncConnection) -> tuple[datetime | None, datetime | None]:
    """When the next delivery falls due, and when the next retry of a failed one does."""
    row = (
        await conn.execute(
            select(
                func.min(state_t.c.next_attempt_at),
                func.min(case((state_t.c.failures > 0, state_t.c.next_attempt_at))),
            ).where(state_t.c.status.in_(("requested", "active")))
        )
    ).first()
    return (row[0], row[1]) if row else (None, None)
