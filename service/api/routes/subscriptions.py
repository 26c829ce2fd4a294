"""FHIR Subscription operations (Backport IG 1.1.0): ``$status`` and ``$events``. The
Subscription resource itself is served by the generic resource routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from service.api.deps import AuditedRoute, ContextDep
from service.api.responses import fhir_json
from service.api.routes.resources import FHIR_ERRORS, ResourceId
from service.errors import InvalidRequestError
from service.features.subscriptions import status as subscription_status

router = APIRouter(
    prefix="/fhir/Subscription",
    tags=["FHIR Subscription"],
    responses=FHIR_ERRORS,
    route_class=AuditedRoute,
)


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@router.get(
    "/$status",
    summary="Status of your subscriptions ($status, type level)",
    operation_id="subscription_status_type",
    response_class=Response,
)
async def status_type(
    ctx: ContextDep,
    id: Annotated[
        list[str] | None, Query(description="Subscription ids (default: all yours)")
    ] = None,
    status: Annotated[
        list[str] | None, Query(description="Only these statuses: requested, active, error, off")
    ] = None,
) -> Response:
    """A searchset Bundle of status Parameters (backport-subscription-status-r4), one per
    subscription of your organization."""
    ctx.audit_notes.interaction = "operation"
    ids = _split(id)
    for value in ids or []:
        if not value.replace("-", "").replace(".", "").isalnum() or len(value) > 64:
            raise InvalidRequestError(f"{value!r} is not a valid id", expression=["id"])
    bundle = await subscription_status.status(ctx, ids, _split(status))
    return fhir_json(bundle)


@router.get(
    "/{resource_id}/$status",
    summary="Status of one subscription ($status)",
    operation_id="subscription_status",
    response_class=Response,
)
async def status_instance(resource_id: ResourceId, ctx: ContextDep) -> Response:
    """Its status, events-since-subscription-start and last error, as a searchset Bundle."""
    ctx.audit_notes.interaction = "operation"
    ctx.audit_notes.target = f"Subscription/{resource_id}"
    return fhir_json(await subscription_status.status(ctx, [resource_id], None))


@router.get(
    "/{resource_id}/$events",
    summary="Events a subscription was notified of ($events)",
    operation_id="subscription_events",
    response_class=Response,
)
async def events_instance(
    resource_id: ResourceId,
    ctx: ContextDep,
    eventsSinceNumber: Annotated[
        str | None, Query(description="First event number (inclusive)")
    ] = None,
    eventsUntilNumber: Annotated[
        str | None, Query(description="Last event number (inclusive)")
    ] = None,
    content: Annotated[
        str | None, Query(description="empty, id-only or full-resource (default: the channel's)")
    ] = None,
) -> Response:
    """The retained events in the range, as a history Bundle (status type query-event), shown
    as you may see them now: recover the event numbers a notification gap says you missed."""
    ctx.audit_notes.interaction = "operation"
    ctx.audit_notes.target = f"Subscription/{resource_id}"
    bundle = await subscription_status.events(
        ctx, resource_id, since=eventsSinceNumber, until=eventsUntilNumber, content=content
    )
    return fhir_json(bundle)
