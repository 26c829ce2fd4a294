"""FHIR Measure (read-only, the built-in program measures) and $evaluate-measure."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.api.deps import AuditedRoute, ContextDep
from service.api.responses import fhir_json
from service.api.routes.fhir_patient_match import PARAMETERS
from service.api.routes.resources import FHIR_ERRORS
from service.features.measures import fhir as measures_fhir
from service.workflows import resources as wf
from service.workflows.access import require_scope

router = APIRouter(
    prefix="/fhir/Measure", tags=["FHIR Measure"], responses=FHIR_ERRORS, route_class=AuditedRoute
)

# A date, or the date part of a dateTime (the period is whole UTC days).
_DAY = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(T.*)?$"
# Both are required; optional here so that the scope is checked before the parameters (a
# client without MeasureReport access hears 403, not what its request lacks).
PeriodStart = Annotated[
    str | None,
    Query(alias="periodStart", pattern=_DAY, description="First day (YYYY-MM-DD, UTC); required"),
]
PeriodEnd = Annotated[
    str | None,
    Query(
        alias="periodEnd",
        pattern=_DAY,
        description="Last day (YYYY-MM-DD, UTC), inclusive; required",
    ),
]
Reporter = Annotated[
    str | None,
    Query(
        pattern=r"^Organization/[A-Za-z0-9\-\.]{1,64}$",
        description="Organization/<id>: the caller's own (an administrator: any)",
    ),
]
# Read so that a subject is refused with a message, not ignored; left out of the contract
# because it is never accepted.
Subject = Annotated[str | None, Query(include_in_schema=False)]
EVALUATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/fhir+json": {
                "schema": PARAMETERS,
                "example": {
                    "resourceType": "Parameters",
                    "parameter": [
                        {"name": "periodStart", "valueDate": "2026-11-01"},
                        {"name": "periodEnd", "valueDate": "2026-11-30"},
                    ],
                },
            }
        },
    }
}


@router.get("", summary="The program measures (read-only)", response_class=Response)
async def search_measures(request: Request, ctx: ContextDep) -> Response:
    """Every Measure; `url`, `_id` and `name` narrow the list."""
    require_scope(ctx.principal, "Measure", "s")
    params = dict(request.query_params.items())
    return fhir_json(measures_fhir.measures_bundle(ctx.base_url, params))


@router.get(
    "/$evaluate-measure",
    summary="Evaluate every measure (or `measure`) over a period",
    response_class=Response,
)
async def evaluate_all(
    ctx: ContextDep,
    period_start: PeriodStart = None,
    period_end: PeriodEnd = None,
    measure: Annotated[str | None, Query(description="A Measure id or canonical URL")] = None,
    reporter: Reporter = None,
    subject: Subject = None,
) -> Response:
    """A summary MeasureReport for `measure`, else a Bundle (collection) of one per measure."""
    require_scope(ctx.principal, "MeasureReport", "r")
    values = {
        "periodStart": period_start,
        "periodEnd": period_end,
        "measure": measure,
        "reporter": reporter,
        "subject": subject,
    }
    query = measures_fhir.parse_operation(values, None)
    return fhir_json(await measures_fhir.evaluate_measure(ctx, query))


@router.post(
    "/$evaluate-measure",
    summary="Evaluate every measure (or `measure`) over a period (Parameters)",
    response_class=Response,
    openapi_extra=EVALUATE_BODY,
)
async def evaluate_all_post(request: Request, ctx: ContextDep) -> Response:
    require_scope(ctx.principal, "MeasureReport", "r")
    values = measures_fhir.parameters_values(wf.parse_body(await request.body()))
    query = measures_fhir.parse_operation(values, None)
    return fhir_json(await measures_fhir.evaluate_measure(ctx, query))


@router.get("/{resource_id}", summary="One program measure (read-only)", response_class=Response)
async def read_measure(resource_id: str, ctx: ContextDep) -> Response:
    require_scope(ctx.principal, "Measure", "r")
    return fhir_json(measures_fhir.measure_resource(measures_fhir.measure_by_id(resource_id)))


@router.get(
    "/{resource_id}/$evaluate-measure",
    summary="Evaluate one measure over a period: a summary MeasureReport",
    response_class=Response,
)
async def evaluate_one(
    resource_id: str,
    ctx: ContextDep,
    period_start: PeriodStart = None,
    period_end: PeriodEnd = None,
    reporter: Reporter = None,
    subject: Subject = None,
) -> Response:
    """Populations and strata of the measure; suppressed counts carry data-absent-reason
    `masked` instead of a count."""
    require_scope(ctx.principal, "MeasureReport", "r")
    values = {
        "periodStart": period_start,
        "periodEnd": period_end,
        "reporter": reporter,
        "subject": subject,
    }
    query = measures_fhir.parse_operation(values, resource_id)
    return fhir_json(await measures_fhir.evaluate_measure(ctx, query))


@router.post(
    "/{resource_id}/$evaluate-measure",
    summary="Evaluate one measure over a period (Parameters)",
    response_class=Response,
    openapi_extra=EVALUATE_BODY,
)
async def evaluate_one_post(resource_id: str, request: Request, ctx: ContextDep) -> Response:
    require_scope(ctx.principal, "MeasureReport", "r")
    values = measures_fhir.parameters_values(wf.parse_body(await request.body()))
    query = measures_fhir.parse_operation(values, resource_id)
    return fhir_json(await measures_fhir.evaluate_measure(ctx, query))
