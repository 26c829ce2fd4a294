"""Webhooks for jail systems and programs that do not speak FHIR (``/v1/webhooks``): small
signed JSON messages when a referral the jail made is accepted, rejected or reaches a
milestone, or when its person is about to be released and nobody has accepted it; and, for a
peer or treatment program, when one of its follow-up contacts after release is overdue (its
window passed without a contact that reached the person: ``features.followups``).

A webhook is a subscription of kind ``webhook`` (``subscription_state``): the same worker
numbers its events from the change feed (``Worker._number_changes``), delivers them with the
same leases, retries, backoff and ``error`` state, and keeps them for the same retention, so a
receiver that was down recovers what it missed from ``GET /v1/webhooks/{id}/events``.

Messages follow Standard Webhooks 1.0 (https://www.standardwebhooks.com): one event per POST,
``{"type", "timestamp", "data"}``, headers ``webhook-id`` (the same on every retry: dedupe on
it), ``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 with the
shared secret over ``id.timestamp.body``). What a message says of a referral is what the
webhook's client may read at send time (tenancy, scopes and the Part 2 disclosure policy of a
read), and every message that discloses a Task is audited like a read.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection
from standardwebhooks import Webhook

from service.errors import (
    BusinessRuleError,
    ForbiddenError,
    InvalidRequestError,
    ResourceNotFoundError,
    ServiceError,
)
from service.features.subscriptions.spec import check_endpoint
from service.features.subscriptions.topics import MAX_RELEASE_HOURS
from service.fhir import codes
from service.fhir.dates import format_instant
from service.fhir.followup_plan import FOLLOW_UP_SYSTEM, is_overdue
from service.search.execute import CURRENT_COLS
from service.storage import repository as repo
from service.storage import subscriptions as store
from service.storage.db import read_connection, write_transaction
from service.workflows import resources
from service.workflows.context import WorkflowContext

KIND: Final = "webhook"
# What a client asks for (``events``) and the message ``type`` it gets.
EVENT_TYPES: Final[dict[str, str]] = {
    "accepted": "referral.accepted",
    "rejected": "referral.rejected",
    "milestone": "referral.milestone",
    "release-imminent": "referral.release_imminent",
    "follow-up-overdue": "follow-up.overdue",
}
SECRET_PREFIX: Final = "whsec_"
# Standard Webhooks: a random secret of 24 to 64 bytes, base64 after ``whsec_``.
SECRET_BYTES: Final = (24, 64)
DEFAULT_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class WebhookSpec:
    """What the worker needs of a webhook (``subscription_state.spec``)."""

    url: str
    secret: str
    events: tuple[str, ...]  # keys of EVENT_TYPES
    release_hours: int
    base_url: str  # the service's FHIR base when the webhook was written (its links)
    timeout: float = DEFAULT_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "secret": self.secret,
            "events": list(self.events),
            "release_hours": self.release_hours,
            "base_url": self.base_url,
            "timeout": self.timeout,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> WebhookSpec:
        return WebhookSpec(
            url=data["url"],
            secret=data["secret"],
            events=tuple(data["events"]),
            release_hours=int(data["release_hours"]),
            base_url=data["base_url"],
            timeout=float(data.get("timeout", DEFAULT_TIMEOUT)),
        )

    def wants(self, event_type: str) -> bool:
        return any(EVENT_TYPES[e] == event_type for e in self.events)


# --- what a change announces -------------------------------------------------------------------


def event_of_change(previous: dict[str, Any] | None, task: dict[str, Any]) -> str | None:
    """The webhook event a new version of a Task is, if any: for a referral Task, accepted or
    rejected when its status became so, else a milestone when its business status changed;
    for a follow-up Task, overdue when it was just marked so."""
    if task.get("resourceType") != "Task":
        return None
    before = previous or {}
    if task.get("intent") == "plan":  # a program's follow-up contact: its overdue mark
        if is_overdue(task) and not is_overdue(before):
            return EVENT_TYPES["follow-up-overdue"]
        return None
    if task.get("intent") != "order":
        return None
    status = task.get("status")
    if status in ("accepted", "rejected") and before.get("status") != status:
        return EVENT_TYPES[status]
    if previous is not None and task.get("businessStatus") != before.get("businessStatus"):
        return EVENT_TYPES["milestone"]
    return None


def made_by(task: dict[str, Any], organization: str | None) -> bool:
    """Whether ``organization`` made the referral the Task carries out (its requester; a
    follow-up Task's requester is the program that follows the person up)."""
    return (
        organization is not None and (task.get("requester") or {}).get("reference") == organization
    )


# --- the message -------------------------------------------------------------------------------


def message_id(webhook_id: str, event_number: int) -> str:
    """``webhook-id``: the same for every attempt of one event (no ``.``, as the spec asks)."""
    return f"msg_{webhook_id.replace('-', '')}_{event_number}"


def message(
    spec: WebhookSpec,
    webhook_id: str,
    event: store.Event,
    task: dict[str, Any] | None,
) -> dict[str, Any]:
    """The message of ``event``; ``task``: the Task version as the client may read it now
    (None: it may not, and the message names nothing but its number)."""
    data: dict[str, Any] = {"webhook_id": webhook_id, "event_number": event.event_number}
    if task is None:
        data["withheld"] = True
    else:
        data.update(_referral_fields(spec.base_url, task))
    return {
        "type": event.event_type,
        "timestamp": format_instant(event.recorded),
        "data": data,
    }


def _referral_fields(base_url: str, task: dict[str, Any]) -> dict[str, Any]:
    focus = str((task.get("focus") or {}).get("reference", ""))
    if not focus:  # a follow-up Task is basedOn the referral
        focus = next(
            (
                str(b.get("reference"))
                for b in task.get("basedOn", [])
                if str(b.get("reference", "")).startswith("ServiceRequest/")
            ),
            "",
        )
    referral_id = focus.removeprefix("ServiceRequest/") if focus.startswith("Service") else None
    coding = next(
        (
            c
            for c in (task.get("businessStatus") or {}).get("coding", [])
            if c.get("system") in (codes.BUSINESS_STATUS_SYSTEM, FOLLOW_UP_SYSTEM)
        ),
        None,
    )
    period = (task.get("restriction") or {}).get("period") or {}
    follow_up = task.get("intent") == "plan"
    jms_id = next(
        (
            i.get("value")
            for i in task.get("identifier", [])
            if "/referral-id" in str(i.get("system"))
        ),
        None,
    )
    root = base_url.removesuffix("/fhir")
    version = (task.get("meta") or {}).get("versionId")
    return {
        "referral_id": referral_id,
        "jms_referral_id": jms_id,
        "task_id": task.get("id"),
        "task_version": int(version) if version else None,
        "status": task.get("status"),
        "milestone": (
            {"code": coding.get("code"), "display": coding.get("display")} if coding else None
        ),
        "reason": (task.get("statusReason") or {}).get("text"),
        "owner": (task.get("owner") or {}).get("reference"),
        "expected_release_at": None if follow_up else period.get("start"),
        **(
            {
                "patient_id": str((task.get("for") or {}).get("reference", "")).removeprefix(
                    "Patient/"
                ),
                "released_at": period.get("start"),
                "due_at": period.get("end"),
                "description": task.get("description"),
            }
            if follow_up
            else {}
        ),
        "links": {
            "referral": f"{root}/v1/referrals/{referral_id}" if referral_id else None,
            "task": f"{base_url}/Task/{task.get('id')}/_history/{version}",
        },
    }


def signed(spec: WebhookSpec, msg_id: str, body: bytes, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (its timestamp is the attempt's)."""
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(spec.secret).sign(msg_id, at, body),
    }


async def shown_task(
    conn: AsyncConnection, ctx: WorkflowContext, event: store.Event
) -> dict[str, Any] | None:
    """The event's Task version as ``ctx``'s client may read it now (a read through the
    disclosure policy, noted in ``ctx.accessed``); None when it may not."""
    seen = await repo.which_pass(
        conn,
        [(event.focus_type, event.focus_id)],
        lambda rtype: ctx.access(rtype, CURRENT_COLS),
    )
    if not seen.get((event.focus_type, event.focus_id), False):
        return None
    try:
        stored = await resources.vread_in(
            conn, ctx, event.focus_type, event.focus_id, str(event.focus_version)
        )
    except ServiceError:
        return None
    return resources.loads(stored)


# --- the /v1 use cases -------------------------------------------------------------------------


def check_secret(secret: str) -> None:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith(SECRET_PREFIX) or not SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]:
        raise InvalidRequestError(
            "secret must be 'whsec_' followed by the base64 of 24 to 64 random bytes "
            '(Standard Webhooks), e.g. python -c "import base64, os; '
            "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"",
            expression=["secret"],
        )


def _require_client(ctx: WorkflowContext) -> str:
    who = ctx.principal
    if who is None or who.organization is None:
        raise ForbiddenError("A webhook is registered by a client acting for an organization")
    if not who.is_admin and not who.scopes.allows("Task", "r"):
        raise ForbiddenError(
            "Webhooks announce referral Tasks: your token needs read access to Task "
            "(system/Task.r or wider)"
        )
    return who.organization


def _spec(
    ctx: WorkflowContext, *, url: str, secret: str, events: list[str], release_hours: int
) -> WebhookSpec:
    check_endpoint(url, settings=ctx.settings, element="url")
    check_secret(secret)
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown or not events:
        raise InvalidRequestError(
            f"events must name one or more of {', '.join(EVENT_TYPES)}"
            + (f", not {', '.join(unknown)}" if unknown else ""),
            expression=["events"],
        )
    if not 1 <= release_hours <= MAX_RELEASE_HOURS:
        raise InvalidRequestError(
            f"release_hours must be from 1 to {MAX_RELEASE_HOURS}", expression=["release_hours"]
        )
    return WebhookSpec(
        url=url,
        secret=secret,
        events=tuple(dict.fromkeys(events)),
        release_hours=release_hours,
        base_url=ctx.base_url,
        timeout=min(DEFAULT_TIMEOUT, ctx.settings.subscription_timeout_seconds),
    )


def view(ctx: WorkflowContext, state: store.State) -> dict[str, Any]:
    """A webhook as its organization reads it (never its secret)."""
    spec = WebhookSpec.from_json(state.spec)
    root = ctx.base_url.removesuffix("/fhir")
    return {
        "id": state.id,
        "url": spec.url,
        "events": list(spec.events),
        "release_hours": spec.release_hours,
        "status": state.status,
        "error": state.last_error,
        "failures": state.failures,
        "events_count": state.events_count,
        "delivered_through": state.delivered_through,
        "last_sent_at": format_instant(state.last_sent_at) if state.last_sent_at else None,
        "links": {
            "self": f"{root}/v1/webhooks/{state.id}",
            "events": f"{root}/v1/webhooks/{state.id}/events",
        },
    }


async def create(
    ctx: WorkflowContext, *, url: str, secret: str, events: list[str], release_hours: int
) -> tuple[int, dict[str, Any]]:
    """201 and the new webhook; 200 and the organization's webhook already at ``url`` (a
    retried registration creates no second one: change it with PUT)."""
    organization = _require_client(ctx)
    spec = _spec(ctx, url=url, secret=secret, events=events, release_hours=release_hours)
    assert ctx.principal is not None
    async with write_transaction(ctx.engine) as conn:
        await repo.lock_key(conn, f"webhooks:{organization}")
        for existing in await store.of_kind(conn, KIND, organization):
            if existing.spec.get("url") == url:
                return 200, view(ctx, existing)
        state = await store.save_client_write(
            conn,
            sid=str(uuid.uuid4()),
            kind=KIND,
            organization=organization,
            client_id=ctx.principal.client_id,
            scopes=ctx.principal.scopes.to_string(),
            spec={**spec.to_json(), "since": _now().isoformat()},
            status="active",
            now=_now(),
        )
    return 201, view(ctx, state)


async def list_all(ctx: WorkflowContext) -> list[dict[str, Any]]:
    organization = _require_client(ctx)
    async with read_connection(ctx.engine) as conn:
        found = await store.of_kind(conn, KIND, organization)
    return [view(ctx, s) for s in found]


async def _own(conn: AsyncConnection, ctx: WorkflowContext, wid: str) -> store.State:
    organization = _require_client(ctx)
    state = await store.get_state(conn, wid)
    if state is None or state.kind != KIND or state.organization != organization:
        # Another organization's webhook is not named: it does not exist for this caller.
        raise ResourceNotFoundError(f"Your organization has no webhook {wid}")
    return state


async def get(ctx: WorkflowContext, wid: str) -> dict[str, Any]:
    async with read_connection(ctx.engine) as conn:
        return view(ctx, await _own(conn, ctx, wid))


async def replace(
    ctx: WorkflowContext,
    wid: str,
    *,
    url: str,
    secret: str,
    events: list[str],
    release_hours: int,
) -> dict[str, Any]:
    """A new configuration; a webhook in ``error`` is active again. Delivery resumes after
    the last event numbered: what was missed is read from the events list."""
    spec = _spec(ctx, url=url, secret=secret, events=events, release_hours=release_hours)
    assert ctx.principal is not None
    async with write_transaction(ctx.engine) as conn:
        current = await _own(conn, ctx, wid)
        state = await store.save_client_write(
            conn,
            sid=wid,
            kind=KIND,
            organization=current.organization,
            client_id=ctx.principal.client_id,
            scopes=ctx.principal.scopes.to_string(),
            spec={**spec.to_json(), "since": current.spec.get("since", _now().isoformat())},
            status="active",
            now=_now(),
        )
    return view(ctx, state)


async def delete(ctx: WorkflowContext, wid: str) -> None:
    async with write_transaction(ctx.engine) as conn:
        await _own(conn, ctx, wid)
        await store.drop_state(conn, wid)


async def events(
    ctx: WorkflowContext, wid: str, *, since: int, until: int | None, limit: int
) -> dict[str, Any]:
    """The messages of events ``since`` < number <= ``until`` still kept (retention:
    HANDOFF_SUBSCRIPTION_EVENT_RETENTION_HOURS), as the client may read them now."""
    if since < 0 or (until is not None and until < since):
        raise BusinessRuleError(
            "since must be 0 or more and until no less than since", expression=["since"]
        )
    async with read_connection(ctx.engine) as conn:
        state = await _own(conn, ctx, wid)
        spec = WebhookSpec.from_json(state.spec)
        through = state.events_count if until is None else min(until, state.events_count)
        found = await store.events_between(conn, wid, after=since, through=through, limit=limit)
        out = [message(spec, wid, e, await shown_task(conn, ctx, e)) for e in found]
    more = len(found) == limit and found[-1].event_number < through
    return {
        "webhook_id": wid,
        "events_count": state.events_count,
        "events": out,
        "next_since": found[-1].event_number if more else None,
    }


def encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def _now() -> datetime:
    return datetime.now(UTC)
