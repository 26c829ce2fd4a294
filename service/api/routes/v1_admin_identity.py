"""Administration: person-identifier domains (organizations that share the JMS person id)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import AuditedRoute, ContextDep
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_record_views import IdentityDomain
from service.features.identity import domains

router = APIRouter(
    prefix="/v1/admin/identity-domains", tags=["Administration"], route_class=AuditedRoute
)

DomainName = Annotated[
    str, Path(pattern=r"^[a-z0-9][a-z0-9\-]{0,62}$", description="e.g. county-jail")
]


class DomainIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "organizations": [
                    "Organization/demo-county-jail",
                    "Organization/demo-jail-health",
                ]
            }
        },
    )
    organizations: list[Annotated[str, Field(pattern=r"^Organization/[A-Za-z0-9\-\.]{1,64}$")]] = (
        Field(min_length=1, max_length=50)
    )


@router.get(
    "",
    summary="Person-identifier domains",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "Every domain", "model": list[IdentityDomain]}},
)
async def list_domains(ctx: ContextDep) -> list[dict[str, Any]]:
    """Each domain and its organizations (`handoff/admin` only)."""
    return await domains.list_domains(ctx)


@router.put(
    "/{domain}",
    summary="Declare a person-identifier domain",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {"description": "The domain as it now is", "model": IdentityDomain},
    },
)
async def put_domain(domain: DomainName, payload: DomainIn, ctx: ContextDep) -> dict[str, Any]:
    """The organizations that share the person ids of one JMS (e.g. a county jail and its
    health unit): their records of a person land on one Patient. The domain holds exactly the
    organizations given (`handoff/admin` only)."""
    return await domains.set_domain(ctx, domain, payload.organizations)


@router.delete(
    "/{domain}", status_code=204, summary="Dissolve a person-identifier domain", responses=V1_ERRORS
)
async def delete_domain(domain: DomainName, ctx: ContextDep) -> Response:
    """Its organizations match people by their own identifiers again; Patients already
    matched within the domain keep the identifiers they have."""
    await domains.remove_domain(ctx, domain)
    return Response(status_code=204)
