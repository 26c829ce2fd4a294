"""Write rules of the Subscription resource: what a client may subscribe to, and the delivery
state kept with each of its versions.

A client's create or update is checked (``spec.read_spec``, ``spec.check_reach``) and stored
as ``requested`` (a handshake follows) or ``off``; the worker alone moves it to ``active`` or
``error``. The subscription reads "as" the client that last wrote it, with the scopes its token
held then (``subscription_state.client_id``, ``scopes``): a narrower token later does not
widen it, and a disabled client's subscriptions stop delivering.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.errors import BusinessRuleError, ForbiddenError
from service.features.subscriptions.spec import PROFILE, check_reach, read_spec
from service.search.execute import CURRENT_COLS
from service.storage import repository as repo
from service.storage import subscriptions as store
from service.workflows.rules import RuleSet, WriteEvent, WrittenEvent

# Set in ``WorkflowContext.outcomes`` by the worker's own status changes.
SERVER_WRITE = "subscriptions.server_write"


def _is_server(event: WriteEvent | WrittenEvent) -> bool:
    return bool(event.ctx.outcomes.get(SERVER_WRITE))


async def check_subscription(event: WriteEvent) -> None:
    if event.body is None or _is_server(event):
        return
    ctx = event.ctx
    body = event.body
    spec = read_spec(body, settings=ctx.settings, base_url=ctx.base_url)
    check_reach(spec.topic_def, spec.filters, ctx.principal)
    if ctx.principal is None:
        raise ForbiddenError("A Subscription is created by a client, for its organization")
    ids = [
        (spec.topic_def.resource_type, v) for f in spec.filters if f.kind == "id" for v in f.values
    ]
    if ids:
        seen = await repo.which_pass(event.conn, ids, lambda rtype: ctx.access(rtype, CURRENT_COLS))
        hidden = [f"{t}/{i}" for t, i in ids if not seen.get((t, i), False)]
        if hidden:
            raise BusinessRuleError(
                f"The filter names {', '.join(hidden)}, which your organization cannot read",
                expression=["Subscription.criteria"],
            )
    body["status"] = "off" if body.get("status") == "off" else "requested"
    body.pop("error", None)
    meta: dict[str, Any] = body.setdefault("meta", {})
    profiles = meta.setdefault("profile", [])
    if PROFILE not in profiles:
        profiles.append(PROFILE)


async def keep_state(event: WrittenEvent) -> None:
    if _is_server(event):
        return
    sid = event.stored.id
    if event.body is None:
        await store.drop_state(event.conn, sid)
        return
    ctx = event.ctx
    principal = ctx.principal
    assert principal is not None  # check_subscription refuses server-less writes
    spec = read_spec(event.body, settings=ctx.settings, base_url=ctx.base_url)
    await store.save_client_write(
        event.conn,
        sid=sid,
        kind="fhir",
        organization=principal.organization,
        client_id=principal.client_id,
        scopes=principal.scopes.to_string(),
        spec={**spec.to_json(), "base_url": ctx.base_url, "since": _now().isoformat()},
        status=event.body["status"],
        now=_now(),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def register(rules: RuleSet) -> None:
    rules.on_write("Subscription", check_subscription)
    rules.on_written("Subscription", keep_state)
