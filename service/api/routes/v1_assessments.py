"""JMS API: instruments, assessments and a person's results (/v1)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, field_validator

from service.api.deps import AuditedRoute, ContextDep
from service.api.headers import IdempotencyKey
from service.api.routes.v1_models import (
    Instant,
    Intercept,
    JmsRequest,
    PersonIn,
    StaffIn,
)
from service.api.routes.v1_record_views import (
    AssessmentView,
    InstrumentSummary,
    InstrumentView,
    PersonAssessment,
)
from service.features.assessments.instruments import get_instrument, list_instruments
from service.features.assessments.record import (
    AssessmentInput,
    person_assessments,
    record_assessment,
)
from service.workflows import idempotency

router = APIRouter(prefix="/v1", tags=["JMS: assessments"], route_class=AuditedRoute)

V1_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": text,
        "content": {
            "application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}
        },
    }
    for code, text in {
        400: "The body is not JSON, or a header (e.g. Idempotency-Key) is malformed",
        401: "Missing or invalid access token",
        403: "The token does not allow this",
        404: "Not found (or not visible to this client)",
        410: "A record the request names was deleted",
        414: "The URL is longer than HANDOFF_MAX_URL_BYTES",
        415: "The body is not declared as JSON (Content-Type: application/json)",
        422: "The request has problems; the OperationOutcome lists every one",
        429: "This client has too many requests in progress; retry after Retry-After",
        431: "The headers are larger than HANDOFF_MAX_HEADER_BYTES",
    }.items()
}


class AssessmentIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "person": PersonIn.model_config["json_schema_extra"]["example"],  # type: ignore[index]
                "instrument": "dast-10",
                # Item link_ids and choice codes as GET /v1/instruments/dast-10 lists them
                # (LA33-6 = yes, LA32-8 = no).
                "answers": {
                    f"dast10-{n}": "LA33-6" if n in (1, 3) else "LA32-8" for n in range(1, 11)
                },
                "administered_by": {"id": "S-77", "name": "Jordan Lee", "role": "peer-specialist"},
                "administered_at": "2026-11-26T09:30:00-05:00",
                "intercept": 3,
            }
        },
    )
    person: PersonIn
    instrument: str = Field(
        min_length=1,
        max_length=400,
        description="Instrument key (GET /v1/instruments) or canonical",
    )
    answers: dict[str, Any] = Field(description="Answers keyed by item link_id; codes for choices")
    administered_by: StaffIn
    administered_at: Instant
    intercept: Intercept
    location: str | None = Field(
        None, pattern=r"^(Location|Organization)/[A-Za-z0-9\-\.]{1,64}$", description="Where"
    )
    status: Literal["completed", "in-progress", "amended"] = "completed"

    @field_validator("administered_at")
    @classmethod
    def _not_future(cls, value: dt.datetime) -> dt.datetime:
        if value > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5):
            raise ValueError("administered_at is in the future")
        return value


@router.get(
    "/instruments",
    summary="Instruments a JMS can present",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {"description": "Active instruments, by key", "model": list[InstrumentSummary]},
    },
)
async def instruments(ctx: ContextDep) -> list[dict[str, Any]]:
    """Every active Questionnaire: the built-in ones (`taps`, `audit-c`, `dast-10`,
    `overdose-risk`) and any a site loaded through FHIR."""
    return await list_instruments(ctx)


@router.get(
    "/instruments/{key}",
    summary="One instrument as simple JSON",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "The instrument", "model": InstrumentView}},
)
async def instrument(key: str, ctx: ContextDep) -> dict[str, Any]:
    """Items, answer choices (with their scores), help text and skip logic (`enable_when`)
    in a form a jail UI can render without understanding FHIR."""
    return await get_instrument(ctx, key)


@router.post(
    "/assessments",
    status_code=201,
    summary="Record a screening or overdose-risk assessment",
    responses={**V1_ERRORS, 201: {"description": "Recorded and scored", "model": AssessmentView}},
)
async def create_assessment(
    payload: AssessmentIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Matches or creates the person (by the jail's identifiers), stores the answers as a
    QuestionnaireResponse and the server-computed scores as Observations in one transaction,
    and answers with the score, its band and, for the overdose checklist, the triage result
    and the factors that triggered it. Retrying with the same `Idempotency-Key` returns the
    original result."""
    idempotency.check_key(idempotency_key)
    data = AssessmentInput(
        person=payload.person.to_domain(),
        instrument=payload.instrument,
        answers=payload.answers,
        administered_by_name=payload.administered_by.name,
        administered_by_role=payload.administered_by.role,
        administered_by_id=payload.administered_by.id,
        administered_at=payload.administered_at.isoformat(),  # Instant: zoned
        intercept=payload.intercept,
        location=payload.location,
        status=payload.status,
    )
    status, body = await record_assessment(
        ctx,
        data,
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(payload.model_dump(mode="json")),
    )
    return JSONResponse(body, status_code=status)


@router.get(
    "/people/{patient_id}/assessments",
    summary="A person's assessments and results, newest first",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {"description": "Assessments, newest first", "model": list[PersonAssessment]},
    },
)
async def assessments_of(patient_id: str, ctx: ContextDep) -> list[dict[str, Any]]:
    return await person_assessments(ctx, patient_id)
