"""Provider API: follow-up after release, for peer and treatment programs without FHIR: the
contact log (/v1/people/{id}/contacts) and the follow-up worklist (/v1/follow-ups)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import AuditedRoute, ContextDep
from service.api.headers import IdempotencyKey
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import Instant, JmsRequest
from service.errors import BusinessRuleError, Issue
from service.features import contacts as contact_log
from service.features import worklist
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
