"""``$status`` and ``$events`` (Backport IG 1.1.0): where a subscription stands, and the
events a subscriber missed (kept ``HANDOFF_SUBSCRIPTION_EVENT_RETENTION_HOURS``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

from service.errors import InvalidRequestError
from service.features.subscriptions.notifications import (
    notification_bundle,
    status_parameters,
)
from service.features.subscriptions.spec import CONTENTS, Spec
from service.features.subscriptions.worker import show_events
from service.fhir.dates import format_instant
from service.fhir.primitives import unsigned_int
from service.storage import subscriptions as store
from service.storage.db import read_connection
from service.storage.repository import StoredResource
from service.workflows import resources
from service.workflows.context import WorkflowContext

# The most events one $events answer carries: ask again from the next number for more.
MAX_EVENTS: Final = 1000


def _status_of(stored: StoredResource, state: store.State | None) -> tuple[str, str | None]:
    body = resources.loads(stored)
    status = state.status if state is not None else str(body.get("status", "off"))
    return status, (state.last_error if state is not None else body.get("error"))


def _parameters(ctx: WorkflowContext, stored: StoredResource, state: store.State | None) -> Any:
    body = resources.loads(stored)
    status, error = _status_of(stored, state)
    return status_parameters(
        base_url=ctx.base_url,
        subscription_id=stored.id,
        topic=str(body.get("criteria", "")),
        status=status,
        kind="query-status",
        events_since_start=state.events_count if state else 0,
        events=[],
        content="empty",
        error=error if status == "error" else None,
    )


async def status(
    ctx: WorkflowContext, ids: list[str] | None, statuses: list[str] | None
) -> dict[str, Any]:
    """``$status`` at the instance (one id) or type level (the caller's subscriptions, or the
    ids given, narrowed to ``statuses``): a searchset of status Parameters."""
    async with read_connection(ctx.engine) as conn:
        if ids is not None and len(ids) == 1:
            found = [await resources.read_in(conn, ctx, "Subscription", ids[0])]
        else:
            params = [("_count", str(ctx.settings.max_page_size))]
            if ids:
                params.append(("_id", ",".join(ids)))
            request = resources.parse_search_params(ctx, "Subscription", params, strict=True)
            found = (await resources.search_in(conn, ctx, request)).matches
        states = await store.states(conn, [s.id for s in found])
    entries = []
    for stored in found:
        state = states.get(stored.id)
        if statuses and _status_of(stored, state)[0] not in statuses:
            continue
        parameters = _parameters(ctx, stored, state)
        entries.append(
            {
                "fullUrl": f"urn:uuid:{parameters['id']}",
                "resource": parameters,
                "search": {"mode": "match"},
            }
        )
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "timestamp": format_instant(datetime.now(UTC)),
        "total": len(entries),
        "entry": entries,
    }


def _number(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    number = unsigned_int(value)
    if number is None:
        raise InvalidRequestError(
            f"{name} must be an event number (a whole number, 0 or more), not {value!r}",
            expression=[name],
        )
    return number


async def events(
    ctx: WorkflowContext,
    sid: str,
    *,
    since: str | None,
    until: str | None,
    content: str | None,
) -> dict[str, Any]:
    """``$events``: the retained events numbered ``eventsSinceNumber`` to ``eventsUntilNumber``
    (both inclusive; by default every retained one), as a query-event notification Bundle, at
    most ``MAX_EVENTS`` of them. Shown as the caller may see them now."""
    first = _number(since, "eventsSinceNumber")
    last = _number(until, "eventsUntilNumber")
    if content is not None and content not in CONTENTS:
        raise InvalidRequestError(
            f"content must be one of {', '.join(CONTENTS)}, not {content!r}",
            expression=["content"],
        )
    async with read_connection(ctx.engine) as conn:
        stored = await resources.read_in(conn, ctx, "Subscription", sid)
        state = await store.get_state(conn, sid)
        count = state.events_count if state else 0
        through = count if last is None else min(last, count)
        found = (
            await store.events_between(
                conn, sid, after=(first or 1) - 1, through=through, limit=MAX_EVENTS
            )
            if state
            else []
        )
    spec = Spec.from_json(state.spec) if state else None
    wanted = content or (spec.content if spec else "id-only")
    shown = await show_events(ctx, wanted, found)
    status_now, error = _status_of(stored, state)
    return notification_bundle(
        base_url=ctx.base_url,
        subscription_id=sid,
        topic=str(resources.loads(stored).get("criteria", "")),
        status=status_now,
        kind="query-event",
        events_since_start=count,
        events=shown,
        content=wanted,
        error=error if status_now == "error" else None,
    )
