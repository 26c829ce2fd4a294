"""Provider API: follow-up after release, for peer and treatment programs without FHIR: the
contact log (/v1/people/{id}/contacts), the follow-up worklist (/v1/follow-ups) and the
program's follow-up plan (/v1/follow-up-plans)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.api.deps import AuditedRoute, ContextDep
from service.api.headers import IdempotencyKey
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import Instant, JmsRequest
from service.errors import BusinessRuleError, Issue
from service.features import contacts as contact_log
from service.features import followup_plans, worklist
from service.fhir.followup_plan import MEDIUMS, TOPICS
from service.workflows import idempotency

router = APIRouter(tags=["Providers: follow-up"], route_class=AuditedRoute)

Medium = Literal["in-person", "phone", "text", "video"]
Topic = Literal[
    "naloxone-in-hand", "moud-adherence", "housing", "transport", "overdose-since-release"
]
assert set(MEDIUMS) == set(Medium.__args__)  # type: ignore[attr-defined]
assert set(TOPICS) == set(Topic.__args__)  # type: ignore[attr-defined]


class ContactIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "at": "2030-06-02T16:00:00-05:00",  # calendar: fixed (Swagger example)
                "medium": "phone",
                "reached": True,
                "topics": ["naloxone-in-hand", "transport"],
                "next_step": "Ride to the OTP on Thursday 8:30",
            }
        },
    )
    at: Instant = Field(description="When the attempt was made (ISO 8601, with a time zone)")
    medium: Medium
    reached: bool = Field(description="Whether the person was reached")
    topics: list[Topic] = Field(default_factory=list, max_length=5, description="What was covered")
    next_step: str | None = Field(None, max_length=500)
    notes: str | None = Field(None, max_length=2000)

    def to_domain(self) -> contact_log.Contact:
        return contact_log.Contact(
            at=self.at,
            medium=self.medium,
            reached=self.reached,
            topics=list(dict.fromkeys(self.topics)),
            next_step=self.next_step,
            notes=self.notes,
        )


_EXAMPLE_PATIENT = "0193c1d2-7a4b-7c3e-9f10-2b3c4d5e6f70"


class ContactView(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "contact_id": "0193c1e0-1111-7abc-8def-0123456789ab",
                "patient_id": _EXAMPLE_PATIENT,
                "at": "2030-06-02T21:00:00Z",  # calendar: fixed (Swagger example)
                "medium": "phone",
                "reached": True,
                "topics": ["naloxone-in-hand", "transport"],
                "next_step": "Ride to the OTP on Thursday 8:30",
                "notes": None,
                "follow_up": "0193c1e0-2222-7abc-8def-0123456789ab",
            }
        },
    )
    contact_id: str | None = Field(description="The FHIR Communication id")
    patient_id: str
    at: str | None
    medium: str | None
    reached: bool
    topics: list[str]
    next_step: str | None
    notes: str | None
    follow_up: str | None = Field(description="The follow-up Task id this contact completed")


class PersonName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family_name: str | None
    given_names: list[str]


class LastContact(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_id: str | None
    at: str | None
    medium: str | None
    reached: bool


class FollowUpView(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "task_id": "0193c1e0-2222-7abc-8def-0123456789ab",
                "bucket": "due-today",
                "due_at": "2030-06-04T21:00:00Z",  # calendar: fixed (Swagger example)
                "released_at": "2030-06-01T21:00:00Z",  # calendar: fixed
                "description": "Contact within 72 hours of release",
                "referral_id": "0193c1d9-3333-7abc-8def-0123456789ab",
                "patient_id": _EXAMPLE_PATIENT,
                "facility": "Location/demo-county-jail-site",
                "facility_name": "Riverbend County Jail main site",
                "person": {"family_name": "Nguyen", "given_names": ["Alex"]},
                "last_contact": {
                    "contact_id": "0193c1e0-1111-7abc-8def-0123456789ab",
                    "at": "2030-06-02T21:00:00Z",  # calendar: fixed
                    "medium": "phone",
                    "reached": False,
                },
            }
        },
    )
    task_id: str = Field(description="The FHIR Task (code follow-up-contact)")
    bucket: Literal["overdue", "due-today", "upcoming"]
    due_at: str | None = Field(description="When the contact is due (end of its window)")
    released_at: str | None = Field(description="The person's recorded release")
    description: str | None = Field(description="The plan's action, e.g. within 72 hours")
    referral_id: str | None
    patient_id: str
    facility: str | None = Field(
        None,
        description="The referring facility (Location/Organization), if the referral names one",
    )
    facility_name: str | None = Field(None, description="Its name, if the caller may see it")
    person: PersonName | None
    last_contact: LastContact | None = Field(description="Your latest contact with the person")


@router.post(
    "/v1/people/{patient_id}/contacts",
    status_code=201,
    summary="Log a contact attempt with a person after release",
    response_model=None,
    responses={**V1_ERRORS, 201: {"description": "Logged", "model": ContactView}},
)
async def log_contact(
    patient_id: str,
    payload: ContactIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """A FHIR Communication (status completed when reached, not-done otherwise). A contact
    that reached the person completes your follow-up Task that is due (`follow_up`). Only
    your organization sees its log. `patient_id`: the FHIR Patient of a referral you
    received."""
    idempotency.check_key(idempotency_key)
    status, body = await contact_log.record(
        ctx,
        patient_id,
        payload.to_domain(),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(
            {"patient": patient_id, **payload.model_dump(mode="json")}
        ),
    )
    return JSONResponse(body, status_code=status)


@router.get(
    "/v1/people/{patient_id}/contacts",
    summary="Your contact log for a person, newest first",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "Contacts", "model": list[ContactView]}},
)
async def contacts(patient_id: str, ctx: ContextDep) -> list[dict[str, Any]]:
    return await contact_log.log(ctx, patient_id)


@router.get(
    "/v1/follow-ups",
    summary="Your follow-up worklist: overdue, due today, upcoming",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {
            "description": "Open follow-ups, soonest due first",
            "model": list[FollowUpView],
            "headers": {
                "Link": {
                    "description": 'When more follow: `<url>; rel="next"`',
                    "schema": {"type": "string"},
                }
            },
        },
    },
)
async def follow_ups(
    request: Request,
    ctx: ContextDep,
    bucket: Annotated[
        str | None,
        Query(description="overdue, due-today, upcoming (comma-separated; default: all)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[
        str | None,
        Query(max_length=500, description="Where the page starts: from the `next` Link header"),
    ] = None,
) -> JSONResponse:
    """Your open follow-up Tasks (made at release from your plan), with the person's name,
    release and your last contact. The same Tasks as `GET
    /fhir/Task?owner=<you>&code=https://handoff.dev/fhir/CodeSystem/follow-up|follow-up-contact&status=ready`."""
    buckets = {b.strip() for b in bucket.split(",")} if bucket else None
    unknown = sorted((buckets or set()) - set(worklist.BUCKETS))
    if unknown:
        message = f"bucket: unknown {', '.join(unknown)}; use overdue, due-today or upcoming"
        raise BusinessRuleError(message, issues=[Issue("error", "value", message, ("bucket",))])
    page, following = await worklist.follow_ups(ctx, buckets=buckets, limit=limit, after=after)
    headers = {}
    if following is not None:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
        url = f"{ctx.base_url.removesuffix('/fhir')}/v1/follow-ups?"
        headers["Link"] = f'<{url}{urlencode([*query, ("after", following)])}>; rel="next"'
    return JSONResponse(page, headers=headers)


# --- follow-up plans ---------------------------------------------------------------------------

_EXAMPLE_PLAN = "0193c1e0-4444-7abc-8def-0123456789ab"


class AfterRelease(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int = Field(
        ge=1, le=8760, strict=True, description="How many hours or days after the release"
    )
    unit: Literal["hours", "days"]


class PlanActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200, description="What the contact is")
    after: AfterRelease = Field(description="When it is due, counted from the release")


class FollowUpPlanIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "name": "Peer follow-up: call the first evening, visit in three days",
                "description": "Our peer specialists' contacts after release",
                "actions": [
                    {"title": "Call within 12 hours", "after": {"value": 12, "unit": "hours"}},
                    {"title": "Visit within 3 days", "after": {"value": 3, "unit": "days"}},
                    {"title": "Check in at two weeks", "after": {"value": 14, "unit": "days"}},
                ],
            }
        },
    )
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    actions: list[PlanActionIn] = Field(
        min_length=1, max_length=20, description="The contacts, each due so long after release"
    )
    active: StrictBool = Field(
        True,
        description="false retires the plan: the next releases follow your newest other "
        "active plan, else the built-in default",
    )

    def to_domain(self) -> followup_plans.Plan:
        return followup_plans.Plan(
            name=self.name,
            description=self.description,
            actions=[
                followup_plans.Action(title=a.title, value=a.after.value, unit=a.after.unit)
                for a in self.actions
            ],
            active=self.active,
        )


class PlanActionView(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(description="The PlanDefinition action id")
    title: str | None
    after: dict[str, Any] = Field(description='{"value": 12, "unit": "hours"}')


class PlanLinks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    self: str
    plan_definition: str = Field(description="The FHIR PlanDefinition")


class FollowUpPlanView(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "plan_id": _EXAMPLE_PLAN,
                "name": "Peer follow-up: call the first evening, visit in three days",
                "description": "Our peer specialists' contacts after release",
                "status": "active",
                "builtin": False,
                "current": True,
                "version": 1,
                "updated_at": "2030-06-01T12:00:00.000Z",  # calendar: fixed (Swagger example)
                "actions": [
                    {
                        "id": "contact-1",
                        "title": "Call within 12 hours",
                        "after": {"value": 12, "unit": "hours"},
                    },
                    {
                        "id": "contact-2",
                        "title": "Visit within 3 days",
                        "after": {"value": 3, "unit": "days"},
                    },
                ],
                "links": {
                    "self": f"https://handoff.example.org/v1/follow-up-plans/{_EXAMPLE_PLAN}",
                    "plan_definition": "https://handoff.example.org/fhir/PlanDefinition/"
                    + _EXAMPLE_PLAN,
                },
            }
        },
    )
    plan_id: str = Field(description="The FHIR PlanDefinition id")
    name: str | None
    description: str | None
    status: str | None = Field(description="active, or retired")
    builtin: bool = Field(description="The service's default plan (read-only)")
    current: bool = Field(description="The plan your organization's next releases follow")
    version: int
    updated_at: str | None
    actions: list[PlanActionView]
    links: PlanLinks


PlanId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-\.]+$", description="Plan id")
]


@router.post(
    "/v1/follow-up-plans",
    status_code=201,
    summary="Publish your organization's follow-up plan after release",
    response_model=None,
    responses={**V1_ERRORS, 201: {"description": "Published", "model": FollowUpPlanView}},
)
async def publish_plan(
    payload: FollowUpPlanIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Stored as your FHIR PlanDefinition (as if published through `/fhir/PlanDefinition`).
    Your newest active plan applies to the releases recorded after it; follow-ups already
    made keep their times. Needs `PlanDefinition` create access."""
    idempotency.check_key(idempotency_key)
    status, body = await followup_plans.publish(
        ctx,
        payload.to_domain(),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(payload.model_dump(mode="json")),
    )
    return JSONResponse(body, status_code=status)


@router.get(
    "/v1/follow-up-plans",
    summary="Your follow-up plans, and the built-in default",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "Plans", "model": list[FollowUpPlanView]}},
)
async def list_plans(ctx: ContextDep) -> list[dict[str, Any]]:
    """Newest first; `current` marks the one your next releases follow."""
    return await followup_plans.list_plans(ctx)


@router.get(
    "/v1/follow-up-plans/{plan_id}",
    summary="One follow-up plan",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "The plan", "model": FollowUpPlanView}},
)
async def get_plan(plan_id: PlanId, ctx: ContextDep) -> dict[str, Any]:
    return await followup_plans.get(ctx, plan_id)


@router.put(
    "/v1/follow-up-plans/{plan_id}",
    summary="Change your follow-up plan (applies to later releases)",
    response_model=None,
    responses={
        **V1_ERRORS,
        405: {**V1_ERRORS[404], "description": "The built-in default plan is read-only"},
        200: {"description": "The new version", "model": FollowUpPlanView},
    },
)
async def change_plan(plan_id: PlanId, payload: FollowUpPlanIn, ctx: ContextDep) -> dict[str, Any]:
    """A new version of the PlanDefinition (the same body as the POST). Releases recorded
    after it follow it; follow-ups already made keep their times. The built-in default is
    read-only (405). Needs `PlanDefinition` update access."""
    return await followup_plans.change(ctx, plan_id, payload.to_domain())
