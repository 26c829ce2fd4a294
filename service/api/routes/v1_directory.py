"""JMS API: the service directory (/v1/directory)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.api.deps import AuditedRoute, ContextDep
from service.api.routes.v1_assessments import V1_ERRORS
from service.errors import BusinessRuleError
from service.features.directory.maintenance import set_accepting
from service.features.directory.query import DirectoryQuery, find_services
from service.fhir.service_codes import accepting_of, directory_codes

router = APIRouter(prefix="/v1/directory", tags=["JMS: directory"], route_class=AuditedRoute)

DirectoryService = Literal[
    "moud",
    "moud-methadone",
    "moud-buprenorphine",
    "moud-naltrexone",
    "sud-treatment",
    "harm-reduction",
    "naloxone",
    "peer-support",
    "housing",
    "case-management",
]
assert set(directory_codes()) == set(DirectoryService.__args__)  # type: ignore[attr-defined]
DEFAULT_WITHIN_KM = 50.0


class Site(BaseModel):
    location: str = Field(description="Location/<id>", examples=["Location/demo-otp-site"])
    name: str | None = None
    address: str | None = Field(None, examples=["100 Main St, Riverbend"])
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    distance_km: float | None = Field(None, description="From the point asked about (`near`)")


class DirectoryEntry(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "healthcare_service": "HealthcareService/demo-otp-service-0",
                "organization": "Organization/demo-otp",
                "organization_name": "Harbor Opioid Treatment Program",
                "name": "Methadone and buprenorphine",
                "services": ["moud-methadone", "moud-buprenorphine"],
                "accepting_new_patients": True,
                "languages": ["en", "es"],
                "eligibility": ["Adults 18 and over with opioid use disorder"],
                "hours": [
                    {
                        "daysOfWeek": ["mon", "tue", "wed", "thu", "fri"],
                        "availableStartTime": "06:00:00",
                        "availableEndTime": "14:00:00",
                    }
                ],
                "phone": "555-0100",
                "distance_km": 1.8,
                "sites": [
                    {
                        "location": "Location/demo-otp-site",
                        "name": "Harbor Opioid Treatment Program main site",
                        "address": "410 Harbor Rd, Riverbend",
                        "city": "Riverbend",
                        "latitude": 39.972,
                        "longitude": -82.99,
                        "distance_km": 1.8,
                    }
                ],
            }
        }
    )
    healthcare_service: str = Field(
        description="HealthcareService/<id>: the referral's `receiving_service`"
    )
    organization: str | None = Field(
        description="Organization/<id>: the referral's `receiving_organization`"
    )
    organization_name: str | None
    name: str | None
    services: list[str] = Field(description="Service codes offered (the referral vocabulary)")
    accepting_new_patients: bool | None = Field(
        description="As the provider last said; null when it has not said"
    )
    languages: list[str] = Field(description="Languages spoken (BCP 47 codes, e.g. es)")
    eligibility: list[str]
    hours: list[dict[str, Any]] = Field(
        description="FHIR HealthcareService.availableTime entries (days, opening times)"
    )
    phone: str | None
    distance_km: float | None = Field(description="To the nearest site (with `near`)")
    sites: list[Site]


class AcceptingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"accepting": False}})
    accepting: StrictBool = Field(description="Whether the service accepts new patients now")


class AcceptingOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "healthcare_service": "HealthcareService/demo-otp-service-0",
                "accepting_new_patients": False,
            }
        }
    )
    healthcare_service: str = Field(examples=["HealthcareService/demo-otp-service-0"])
    accepting_new_patients: bool | None


def _point(near: str) -> tuple[float, float]:
    lat_text, _, lon_text = near.partition(",")
    lat, lon = float(lat_text), float(lon_text)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("latitude is -90 to 90 and longitude -180 to 180 (decimal degrees)")
    return lat, lon


@router.get(
    "",
    summary="Services to refer to, nearest first",
    responses=V1_ERRORS,
    response_model=list[DirectoryEntry],
)
async def directory(
    ctx: ContextDep,
    service: Annotated[
        DirectoryService | None,
        Query(description="A service code; `moud` finds every MOUD service"),
    ] = None,
    near: Annotated[
        str | None,
        Query(
            description="latitude,longitude of the person's destination (decimal degrees)",
            pattern=r"^-?[0-9]{1,2}(\.[0-9]+)?,-?[0-9]{1,3}(\.[0-9]+)?$",
            examples=["39.96,-83.00"],
        ),
    ] = None,
    within_km: Annotated[
        float | None,
        Query(gt=0, le=1000, description=f"Distance from `near` (default {DEFAULT_WITHIN_KM:g})"),
    ] = None,
    accepting: Annotated[
        bool | None, Query(description="true: only services accepting new patients")
    ] = None,
    language: Annotated[
        str | None,
        Query(
            pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
            description="A language spoken there (BCP 47, e.g. es)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="At most this many services")] = 20,
) -> list[DirectoryEntry]:
    """Active services offering `service` (or a narrower one), within `within_km` of `near`,
    ranked by distance to their nearest site (by name without `near`). Each entry names the
    `organization` and `healthcare_service` to put in `POST /v1/referrals`. The same data is
    FHIR `HealthcareService?service-type:below=…&location.near=…`."""
    try:
        point = _point(near) if near is not None else None
    except ValueError as exc:
        raise BusinessRuleError(f"near: {exc}", expression=["near"]) from None
    if within_km is not None and point is None:
        raise BusinessRuleError(
            "within_km needs near (the point to measure from)", expression=["within_km"]
        )
    hits = await find_services(
        ctx,
        DirectoryQuery(
            service=service,
            latitude=point[0] if point else None,
            longitude=point[1] if point else None,
            within_km=(within_km or DEFAULT_WITHIN_KM) if point else None,
            accepting=accepting,
            language=language,
            limit=limit,
        ),
    )
    return [
        DirectoryEntry(
            **{k: v for k, v in dataclasses.asdict(h).items() if k != "sites"},
            sites=[
                Site(
                    location=s.location_id,
                    **{k: v for k, v in dataclasses.asdict(s).items() if k != "location_id"},
                )
                for s in h.sites
            ],
        )
        for h in hits
    ]


@router.put(
    "/services/{service_id}/accepting",
    summary="Say whether a service accepts new patients (its provider)",
    responses=V1_ERRORS,
    response_model=AcceptingOut,
)
async def put_accepting(service_id: str, payload: AcceptingIn, ctx: ContextDep) -> AcceptingOut:
    """Only the organization that provides the service (`HealthcareService.providedBy`), or an
    administrator, may change it; the same change can be made with a FHIR PUT or PATCH of the
    HealthcareService's `characteristic`."""
    body = await set_accepting(ctx, service_id, payload.accepting)
    return AcceptingOut(
        healthcare_service=f"HealthcareService/{service_id}",
        accepting_new_patients=accepting_of(body),
    )
