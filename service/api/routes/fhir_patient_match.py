"""FHIR operations on Patients: $match (R4), for integrators; $merge (R5 semantics), for
administrators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import AuditedRoute, ContextDep
from service.api.responses import fhir_json
from service.api.routes.resources import FHIR_ERRORS
from service.features.identity import merge
from service.features.identity.match import match, parse_parameters
from service.workflows import resources as wf
from service.workflows.access import require_scope

router = APIRouter(
    prefix="/fhir/Patient", tags=["FHIR Patient"], responses=FHIR_ERRORS, route_class=AuditedRoute
)


# An operation's input: a FHIR Parameters resource with its parameters (the server reads the
# ones each operation names and says which are missing or malformed).
PARAMETERS = {
    "type": "object",
    "properties": {
        "resourceType": {"type": "string", "enum": ["Parameters"]},
        "parameter": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    },
    "required": ["resourceType", "parameter"],
}


@router.post(
    "/$match",
    summary="Find Patients that may be this person ($match)",
    response_class=Response,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {
                    "schema": PARAMETERS,
                    "example": {
                        "resourceType": "Parameters",
                        "parameter": [
                            {
                                "name": "resource",
                                "resource": {
                                    "resourceType": "Patient",
                                    "name": [{"family": "Rivera", "given": ["Dana"]}],
                                    "birthDate": "1988-03-14",
                                },
                            },
                            {"name": "count", "valueInteger": 5},
                        ],
                    },
                }
            },
        }
    },
)
async def patient_match(request: Request, ctx: ContextDep) -> Response:
    """Returns only Patients the caller may read, each with `search.score` and the
    `match-grade` extension (certain: an identifier; probable: names and birth date;
    possible: birth date and one name)."""
    require_scope(ctx.principal, "Patient", "s")  # before the body: no token, no answer
    body = wf.parse_body(await request.body())
    return fhir_json(await match(ctx, parse_parameters(body)))


@router.post(
    "/$merge",
    summary="Merge two Patients found to be one person (administrators)",
    response_class=Response,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {
                    "schema": PARAMETERS,
                    "example": {
                        "resourceType": "Parameters",
                        "parameter": [
                            {
                                "name": "source-patient",
                                "valueReference": {"reference": "Patient/b"},
                            },
                            {
                                "name": "target-patient",
                                "valueReference": {"reference": "Patient/a"},
                            },
                        ],
                    },
                }
            },
        }
    },
)
async def patient_merge(request: Request, ctx: ContextDep) -> Response:
    """R5 semantics: the source is kept inactive with `link` `replaced-by` the target; every
    record referencing it moves to the target (a new version each, history kept, audited);
    the target gets the source's identifiers (`use: old`) and `link` `replaces`. `preview`:
    what would be done. `handoff/admin` only."""
    require_scope(ctx.principal, "Patient", "u")
    merge.require_admin(ctx)
    body = wf.parse_body(await request.body())
    source, target, preview = merge.parse_parameters(body)
    return fhir_json(await merge.merge(ctx, source, target, preview=preview))
