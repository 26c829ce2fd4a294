"""Provider API: appointments booked for a referral (/v1/referrals/{id}/appointments), for
receiving programs without a FHIR stack. The same records as FHIR ``Appointment``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, field_validator, model_validator

from service.api.deps import AuditedRoute, ContextDep
from service.api.headers import IdempotencyKey
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import Instant, JmsRequest
from service.api.routes.v1_views import AppointmentView
from service.features import appointments as wf
from service.workflows import idempotency

router = APIRouter(
    prefix="/v1/referrals", tags=["Providers: appointments"], route_class=AuditedRoute
)

Reference = Annotated[str, Field(pattern=r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-\.]{1,64}$")]


class AppointmentIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "start": "2030-06-02T09:00:00-05:00",  # calendar: fixed (Swagger example)
                "end": "2030-06-02T10:00:00-05:00",  # calendar: fixed (Swagger example)
                "location": "Location/demo-otp-site",
                "description": "Intake and first buprenorphine dose",
            }
        },
    )
    start: Instant = Field(description="When it starts (ISO 8601, with a time zone)")
    end: Instant | None = Field(None, description="When it ends (default: an hour later)")
    location: Reference | None = Field(
        None,
        description="Location/<id>: where",
        json_schema_extra={"pattern": r"^Location/[A-Za-z0-9\-.]{1,64}$"},
    )
    practitioner: Reference | None = Field(
        None,
        description="Practitioner/<id> or PractitionerRole/<id>: with whom",
        json_schema_extra={"pattern": r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$"},
    )
    description: str | None = Field(None, max_length=500)

    @field_validator("location")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("Location/"):
            raise ValueError(f"must be Location/<id>, not {value}")
        return value

    @field_validator("practitioner")
    @classmethod
    def _practitioner(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("Practitioner/", "PractitionerRole/")):
            raise ValueError(f"must be Practitioner/<id> or PractitionerRole/<id>, not {value}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> AppointmentIn:
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def to_domain(self) -> wf.Booking:
        return wf.Booking(
            start=self.start,
            end=self.end,
            location=self.location,
            practitioner=self.practitioner,
            description=self.description,
        )


class MarkIn(JmsRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {}})
    reason: str | None = Field(
        None, max_length=500, description="Cancelled or missed: why (optional)"
    )


_NO_REASON = MarkIn()
_ONE: dict[int | str, dict[str, Any]] = {
    **V1_ERRORS,
    200: {"description": "The appointment as it now is", "model": AppointmentView},
}


@router.post(
    "/{referral_id}/appointments",
    status_code=201,
    summary="Book an appointment for a referral (receiving organization)",
    response_model=None,
    responses={**V1_ERRORS, 201: {"description": "Booked", "model": AppointmentView}},
)
async def book_appointment(
    referral_id: str,
    payload: AppointmentIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """A FHIR Appointment (status booked) `basedOn` the referral, with the person, the place
    and the practitioner as participants. Only the organization that accepted the referral
    books (403 otherwise); the referral's milestone becomes `intake-scheduled`. A retry with
    the same `Idempotency-Key` answers the first booking."""
    idempotency.check_key(idempotency_key)
    status, body = await wf.book(
        ctx,
        referral_id,
        payload.to_domain(),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(
            {"referral": referral_id, **payload.model_dump(mode="json")}
        ),
    )
    return JSONResponse(body, status_code=status)


@router.get(
    "/{referral_id}/appointments",
    summary="The appointments of a referral",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "Soonest first", "model": list[AppointmentView]}},
)
async def list_appointments(referral_id: str, ctx: ContextDep) -> list[dict[str, Any]]:
    """Every party of the referral sees them; without the receiving organization's consent
    only that one is scheduled (`details_withheld`)."""
    return await wf.list_for_referral(ctx, referral_id)


@router.patch(
    "/{referral_id}/appointments/{appointment_id}",
    summary="Reschedule an appointment",
    response_model=None,
    responses=_ONE,
)
async def reschedule_appointment(
    referral_id: str, appointment_id: str, payload: AppointmentIn, ctx: ContextDep
) -> dict[str, Any]:
    """New start (and end, place, practitioner): the appointment is booked again at that time
    (also after a no-show); the milestone is `intake-scheduled`."""
    return await wf.reschedule(ctx, referral_id, appointment_id, payload.to_domain())


@router.post(
    "/{referral_id}/appointments/{appointment_id}/{move}",
    summary="Mark an appointment attended, missed (no-show) or cancelled",
    response_model=None,
    responses=_ONE,
)
async def mark_appointment(
    referral_id: str,
    appointment_id: str,
    move: Literal["attended", "no-show", "cancel"],
    ctx: ContextDep,
    payload: Annotated[MarkIn, Body()] = _NO_REASON,
) -> dict[str, Any]:
    """`attended`: status fulfilled, the referral's milestone `first-appointment-attended`
    with the appointment's start as when it happened; refused (422) before the person's
    recorded release. `no-show`: status noshow, milestone `no-show`, and the referral is
    escalated (its Task's priority `stat`, which notifies the Task topic's subscribers).
    `cancel`: status cancelled. Repeating a move answers the appointment as it is."""
    return await wf.mark(ctx, referral_id, appointment_id, move, reason=payload.reason)
