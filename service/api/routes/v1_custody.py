"""JMS API: custody stays (/v1/bookings): booking, expected release, transfer, release, and
corrections of each. Each stay is one FHIR Encounter (docs/custody.md)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, model_validator

from service.api.deps import AuditedRoute, ContextDep
from service.api.headers import IdempotencyKey
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import Instant, JmsRequest, PersonIn
from service.api.routes.v1_record_views import BookingView
from service.features.custody import stays
from service.fhir.custody_codes import RELEASE_TYPES
from service.workflows import idempotency

router = APIRouter(prefix="/v1/bookings", tags=["JMS: custody"], route_class=AuditedRoute)

ReleaseType = Literal[
    "court-order",
    "bail",
    "own-recognizance",
    "pretrial-supervision",
    "end-of-sentence",
    "time-served",
    "charges-dropped",
    "probation",
    "parole",
    "transfer",
    "hospital",
    "deceased",
    "other",
]
assert set(RELEASE_TYPES) == set(ReleaseType.__args__)  # type: ignore[attr-defined]

Facility = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="`Location/<id>` of a Location known to Handoff, or the facility's name",
    ),
]
BookingNumber = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9\-\.]+$",
        description="The jail's booking number",
    ),
]
# A clock a few minutes ahead of ours is not a release recorded before it happened.
_CLOCK_SKEW = dt.timedelta(minutes=5)


def _not_future(value: dt.datetime, name: str) -> None:
    if value > dt.datetime.now(dt.UTC) + _CLOCK_SKEW:
        raise ValueError(f"{name} is in the future: record it when it happens")


class BookingIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "booking_number": "2026-11-0457",
                "person": PersonIn.model_config["json_schema_extra"]["example"],  # type: ignore[index]
                "facility": "County Jail, Main Facility",
                "booked_at": "2026-11-20T22:15:00-05:00",  # calendar: fixed (Swagger example)
                "expected_release_at": "2030-06-01T08:00:00-05:00",  # calendar: fixed
            }
        },
    )
    booking_number: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-\.]+$", description="Dedupes retries"
    )
    person: PersonIn
    facility: Facility | None = None
    booked_at: Instant
    expected_release_at: Instant | None = Field(
        None, description="When the person is expected out, if known (it may change later)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> BookingIn:
        _not_future(self.booked_at, "booked_at")
        if self.person.booking_number not in (None, self.booking_number):
            raise ValueError(
                f"person.booking_number ({self.person.booking_number}) is not this booking's "
                f"number ({self.booking_number})"
            )
        if self.expected_release_at is not None and self.expected_release_at < self.booked_at:
            raise ValueError("expected_release_at is before booked_at")
        return self

    def to_domain(self) -> stays.BookingInput:
        return stays.BookingInput(
            booking_number=self.booking_number,
            person=self.person.to_domain(),
            facility=self.facility,
            booked_at=self.booked_at,
            expected_release_at=self.expected_release_at,
        )


class BookingChangeIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"expected_release_at": "2030-06-03T08:00:00-05:00"},  # calendar: fixed
            "minProperties": 1,  # _something
        },
    )
    expected_release_at: Instant | None = Field(
        None, description="The new expected release; null clears it"
    )
    booked_at: Instant | None = Field(None, description="A corrected booking time")
    facility: Facility | None = Field(
        None, description="A corrected facility (a move is a transfer)"
    )

    @model_validator(mode="after")
    def _something(self) -> BookingChangeIn:
        if not self.model_fields_set:
            raise ValueError("give expected_release_at, booked_at or facility")
        if self.booked_at is not None:
            _not_future(self.booked_at, "booked_at")
        return self


class ReleaseRecordIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "released_at": "2026-11-27T16:40:00-05:00",  # calendar: fixed (Swagger example)
                "planned": False,
                "release_type": "court-order",
                "destination": "Home (county)",
            }
        },
    )
    released_at: Instant
    planned: bool = Field(
        description="False for a release without notice (court order tonight, bail) or earlier "
        "than expected: referrals not yet accepted are escalated"
    )
    release_type: ReleaseType
    destination: Facility | None = Field(None, description="Where the person went, when known")

    @model_validator(mode="after")
    def _past(self) -> ReleaseRecordIn:
        _not_future(self.released_at, "released_at")
        return self

    def to_domain(self) -> stays.ReleaseInput:
        return stays.ReleaseInput(
            released_at=self.released_at,
            planned=self.planned,
            release_type=self.release_type,
            destination=self.destination,
        )


class TransferIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "to_facility": "County Jail, North Annex",
                "at": "2026-11-24T10:00:00-05:00",  # calendar: fixed (Swagger example)
            }
        },
    )
    to_facility: Facility
    at: Instant

    @model_validator(mode="after")
    def _past(self) -> TransferIn:
        _not_future(self.at, "at")
        return self


@router.post(
    "",
    status_code=201,
    summary="Book a person into custody",
    responses={
        **V1_ERRORS,
        201: {"description": "Booked", "model": BookingView},
        200: {"description": "This booking_number was already recorded", "model": BookingView},
    },
)
async def create_booking(
    payload: BookingIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Creates or updates the Patient (matched by the jail's identifiers) and the custody stay
    (a FHIR Encounter). The same `booking_number` again answers 200 with the stay as it is
    (change it with PATCH); a retry with the same `Idempotency-Key` answers as the first time."""
    idempotency.check_key(idempotency_key)
    status, body = await stays.book(
        ctx,
        payload.to_domain(),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(payload.model_dump(mode="json")),
    )
    return JSONResponse(body, status_code=status)


@router.get(
    "/{booking_number}",
    summary="A custody stay",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "The stay", "model": BookingView}},
)
async def get_booking(booking_number: BookingNumber, ctx: ContextDep) -> dict[str, Any]:
    """Status (in-custody, released, cancelled), facility and transfers, expected and recorded
    release, and the referrals that belong to the stay."""
    return await stays.get_stay(ctx, booking_number)


@router.patch(
    "/{booking_number}",
    summary="Change the expected release, or correct the booking",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "The stay, changed", "model": BookingView}},
)
async def change_booking(
    booking_number: BookingNumber, payload: BookingChangeIn, ctx: ContextDep
) -> dict[str, Any]:
    """The stay's active referrals follow a changed expected release."""
    fields = payload.model_fields_set
    return await stays.change_booking(
        ctx,
        booking_number,
        booked_at=payload.booked_at,
        expected_release_at=(
            payload.expected_release_at if "expected_release_at" in fields else stays.UNCHANGED
        ),
        facility=payload.facility,
    )


@router.post(
    "/{booking_number}/cancel",
    summary="Cancel a booking entered in error",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "The stay, cancelled", "model": BookingView}},
)
async def cancel_booking(booking_number: BookingNumber, ctx: ContextDep) -> dict[str, Any]:
    """The stay is kept, marked entered-in-error (HL7 A11). A released stay needs its release
    cancelled first."""
    return await stays.cancel_booking(ctx, booking_number)


@router.post(
    "/{booking_number}/transfers",
    summary="Transfer to another facility",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "The stay, transferred", "model": BookingView}},
)
async def transfer(
    booking_number: BookingNumber, payload: TransferIn, ctx: ContextDep
) -> dict[str, Any]:
    return await stays.transfer(ctx, booking_number, to=payload.to_facility, at=payload.at)


@router.post(
    "/{booking_number}/release",
    summary="Record (or correct) the release",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {"description": "The stay, released (with any escalations)", "model": BookingView},
    },
)
async def release(
    booking_number: BookingNumber, payload: ReleaseRecordIn, ctx: ContextDep
) -> dict[str, Any]:
    """Ends the stay. Its referrals carry the release on their timeline and leave the jail's
    worklist; post-release milestones become possible. An unplanned (or early) release with a
    referral not yet accepted escalates it (`escalations` in the answer, `GET
    /v1/referrals/escalations`). Sending the same release again changes nothing; a different
    one corrects it."""
    return await stays.release(ctx, booking_number, payload.to_domain())


@router.post(
    "/{booking_number}/release/cancel",
    summary="Cancel a release entered in error",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {"description": "The stay, in custody again", "model": BookingView},
    },
)
async def cancel_release(booking_number: BookingNumber, ctx: ContextDep) -> dict[str, Any]:
    """The person is in custody again (HL7 A13); the referrals no longer carry the release."""
    return await stays.cancel_release(ctx, booking_number)
