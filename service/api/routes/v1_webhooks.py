"""JMS and provider API: webhooks (/v1/webhooks), signed JSON messages when a referral the jail
made is accepted, rejected or reaches a milestone, or its person's release is near and nobody
accepted it; and when a program's follow-up contact after release is overdue
(service.features.subscriptions.webhooks; Standard Webhooks signatures)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import AuditedRoute, ContextDep
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import JmsRequest
from service.features.subscriptions import webhooks
from service.features.subscriptions.topics import MAX_RELEASE_HOURS

router = APIRouter(prefix="/v1/webhooks", tags=["JMS: webhooks"], route_class=AuditedRoute)

EventName = Literal["accepted", "rejected", "milestone", "release-imminent", "follow-up-overdue"]
WebhookId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-]+$", description="Webhook id")
]
_EXAMPLE_ID = "3f2b8c1e-5d4a-4e6f-9a7b-0c1d2e3f4a5b"


_B64 = "[A-Za-z0-9+/]"
# An absolute https:// URL with a host name (http:// only to this machine, where allowed).
WEBHOOK_URL_PATTERN = (
    r"^(https://[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*|http://(127\.0\.0\.1|localhost))"
    r"(:[0-9]{1,5})?(/[A-Za-z0-9\-._~/]*)?$"
)
WEBHOOK_SECRET_PATTERN = (
    f"^whsec_(({_B64}{{4}}){{8,21}}({_B64}{{2}}==)?|({_B64}{{4}}){{8,20}}{_B64}{{3}}=)$"
)


class WebhookIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "url": "https://jms.example.org/handoff/events",
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "events": ["accepted", "rejected", "milestone", "release-imminent"],
                "release_hours": 24,
            }
        },
    )
    url: str = Field(
        min_length=8,
        max_length=2000,
        json_schema_extra={"pattern": WEBHOOK_URL_PATTERN},
        description="Where messages are POSTed: https:// (http://127.0.0.1 or localhost "
        "only with HANDOFF_SUBSCRIPTION_ALLOW_LOCAL_HTTP=true, or in the demo)",
    )
    secret: str = Field(
        min_length=38,
        max_length=100,
        pattern=r"^whsec_[A-Za-z0-9+/=]+$",
        # Documented exactly: the base64 of 24 to 64 bytes (the validator says why otherwise).
        json_schema_extra={"pattern": WEBHOOK_SECRET_PATTERN},
        description="The shared signing secret: 'whsec_' and the base64 of 24 to 64 random "
        "bytes (Standard Webhooks). Never shown again.",
    )
    events: list[EventName] = Field(
        min_length=1,
        max_length=5,
        description="Which events to send: accepted, rejected, milestone and release-imminent "
        "for the referrals your organization made; follow-up-overdue for your organization's "
        "follow-up contacts after release whose window passed without reaching the person",
    )
    release_hours: int = Field(
        24,
        ge=1,
        le=MAX_RELEASE_HOURS,
        description="release-imminent: how many hours before the expected release an "
        "unaccepted referral is announced",
    )


class WebhookLinks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    self: str
    events: str = Field(description="The events kept, to recover what was missed")


class WebhookView(BaseModel):
    """A webhook and its delivery status (never its secret)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "id": _EXAMPLE_ID,
                "url": "https://jms.example.org/handoff/events",
                "events": ["accepted", "rejected"],
                "release_hours": 24,
                "status": "active",
                "error": None,
                "failures": 0,
                "events_count": 12,
                "delivered_through": 12,
                "last_sent_at": "2026-12-05T14:02:11.120Z",  # calendar: fixed (example)
                "links": {
                    "self": f"https://handoff.example.org/v1/webhooks/{_EXAMPLE_ID}",
                    "events": f"https://handoff.example.org/v1/webhooks/{_EXAMPLE_ID}/events",
                },
            }
        },
    )
    id: str
    url: str
    events: list[EventName]
    release_hours: int
    status: Literal["active", "error"] = Field(
        description="error: delivery stopped after repeated failures (the reason in `error`); "
        "PUT the webhook to resume"
    )
    error: str | None
    failures: int = Field(description="Consecutive failed attempts")
    events_count: int = Field(description="Events numbered since the webhook was registered")
    delivered_through: int = Field(description="The last event number the receiver took")
    last_sent_at: str | None
    links: WebhookLinks


class MessageLinks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    referral: str | None = Field(description="GET it for the referral's full view")
    task: str = Field(description="The FHIR Task version the event is")


class Milestone(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str | None
    display: str | None


class MessageData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    webhook_id: str
    event_number: int = Field(description="1, 2, 3... per webhook, without gaps")
    withheld: bool | None = Field(
        None, description="True when the referral may no longer be disclosed to you"
    )
    referral_id: str | None = None
    jms_referral_id: str | None = None
    task_id: str | None = None
    task_version: int | None = None
    status: str | None = Field(None, description="FHIR Task.status")
    milestone: Milestone | None = None
    reason: str | None = Field(None, description="Why (a rejection's reason)")
    owner: str | None = Field(None, description="Organization/<id> asked to act")
    expected_release_at: str | None = None
    patient_id: str | None = Field(None, description="follow-up.overdue: the person (Patient id)")
    released_at: str | None = Field(None, description="follow-up.overdue: the recorded release")
    due_at: str | None = Field(None, description="follow-up.overdue: when the contact was due")
    description: str | None = Field(None, description="follow-up.overdue: the plan's action")
    links: MessageLinks | None = None


class WebhookMessage(BaseModel):
    """One message, as POSTed (Standard Webhooks)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal[
        "referral.accepted",
        "referral.rejected",
        "referral.milestone",
        "referral.release_imminent",
        "follow-up.overdue",
    ]
    timestamp: str = Field(description="When the event happened (ISO 8601, UTC)")
    data: MessageData


class WebhookEvents(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "webhook_id": _EXAMPLE_ID,
                "events_count": 2,
                "events": [
                    {
                        "type": "referral.accepted",
                        "timestamp": "2026-12-05T14:02:11.120Z",  # calendar: fixed (example)
                        "data": {
                            "webhook_id": _EXAMPLE_ID,
                            "event_number": 2,
                            "referral_id": "5b0e6a0c9d2f4e7a8c1b3d5f7a9c0e2b",
                            "jms_referral_id": "JMS-2026-000123",
                            "task_id": "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
                            "task_version": 2,
                            "status": "accepted",
                            "milestone": {
                                "code": "referral-accepted",
                                "display": "Referral accepted",
                            },
                            "reason": None,
                            "owner": "Organization/demo-otp",
                            "expected_release_at": "2030-06-01T13:00:00Z",  # calendar: fixed
                            "links": {
                                "referral": "https://handoff.example.org/v1/referrals/"
                                "5b0e6a0c9d2f4e7a8c1b3d5f7a9c0e2b",
                                "task": "https://handoff.example.org/fhir/Task/"
                                "9f8e7d6c5b4a39281706f5e4d3c2b1a0/_history/2",
                            },
                        },
                    }
                ],
                "next_since": None,
            }
        },
    )
    webhook_id: str
    events_count: int
    events: list[WebhookMessage]
    next_since: int | None = Field(description="Ask again with since=this for more")


@router.post(
    "",
    status_code=201,
    summary="Register a webhook",
    response_model=WebhookView,
    responses={
        **V1_ERRORS,
        200: {"description": "This url was already registered", "model": WebhookView},
    },
)
async def create_webhook(payload: WebhookIn, ctx: ContextDep) -> JSONResponse:
    """Messages for the referrals your organization made. The same `url` again answers 200
    with the webhook as it is (change it with PUT)."""
    status, body = await webhooks.create(
        ctx,
        url=payload.url,
        secret=payload.secret,
        events=list(payload.events),
        release_hours=payload.release_hours,
    )
    headers = {"Location": body["links"]["self"]} if status == 201 else None
    return JSONResponse(body, status_code=status, headers=headers)


@router.get(
    "",
    summary="Your organization's webhooks",
    response_model=list[WebhookView],
    responses=V1_ERRORS,
)
async def list_webhooks(ctx: ContextDep) -> list[dict[str, Any]]:
    return await webhooks.list_all(ctx)


@router.get(
    "/{webhook_id}",
    summary="A webhook and its delivery status",
    response_model=WebhookView,
    responses=V1_ERRORS,
)
async def get_webhook(webhook_id: WebhookId, ctx: ContextDep) -> dict[str, Any]:
    return await webhooks.get(ctx, webhook_id)


@router.put(
    "/{webhook_id}",
    summary="Change a webhook, or resume one in error",
    response_model=WebhookView,
    responses=V1_ERRORS,
)
async def replace_webhook(
    webhook_id: WebhookId, payload: WebhookIn, ctx: ContextDep
) -> dict[str, Any]:
    """Delivery resumes with the next event; read the ones missed from `/events`."""
    return await webhooks.replace(
        ctx,
        webhook_id,
        url=payload.url,
        secret=payload.secret,
        events=list(payload.events),
        release_hours=payload.release_hours,
    )


@router.delete("/{webhook_id}", status_code=204, summary="Remove a webhook", responses=V1_ERRORS)
async def delete_webhook(webhook_id: WebhookId, ctx: ContextDep) -> Response:
    await webhooks.delete(ctx, webhook_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/events",
    summary="The events kept, to recover missed messages",
    response_model=WebhookEvents,
    responses=V1_ERRORS,
)
async def webhook_events(
    webhook_id: WebhookId,
    ctx: ContextDep,
    since: Annotated[int, Query(ge=0, description="Events after this number")] = 0,
    until: Annotated[int | None, Query(ge=0, description="Up to this number")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> dict[str, Any]:
    """The messages as they would be sent now (what you may no longer read is withheld),
    kept for HANDOFF_SUBSCRIPTION_EVENT_RETENTION_HOURS."""
    return await webhooks.events(ctx, webhook_id, since=since, until=until, limit=limit)
