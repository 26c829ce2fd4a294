"""``GET /v1/directory``: the services a jail can refer to, nearest first.

One FHIR search of HealthcareService (``service-type:below``, ``characteristic``,
``communication``, ``location.near``: the same parameters a FHIR client uses, under the
caller's access rules), then the matches' Locations and Organizations, and each service's
distance to its nearest Location within reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.errors import InvalidRequestError, Issue
from service.fhir.codes import SERVICE_SYSTEM
from service.fhir.service_codes import (
    ACCEPTING,
    CHARACTERISTIC_SYSTEM,
    NOT_ACCEPTING,
    accepting_of,
    directory_codes,
)
from service.search.near import distance_km, position_of
from service.storage.db import read_connection
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

# Services one query ranks at most: a directory query near a point is answered whole (ranked
# by distance, not by the order rows come back), so it must stay bounded.
MAX_CANDIDATES = 2000


@dataclass(frozen=True)
class DirectoryQuery:
    service: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    within_km: float | None = None
    accepting: bool | None = None
    language: str | None = None
    limit: int = 20


@dataclass
class SiteHit:
    location_id: str
    name: str | None
    address: str | None
    city: str | None
    latitude: float | None
    longitude: float | None
    distance_km: float | None


@dataclass
class ServiceHit:
    healthcare_service: str
    organization: str | None
    organization_name: str | None
    name: str | None
    services: list[str]
    accepting_new_patients: bool | None
    languages: list[str]
    eligibility: list[str]
    hours: list[dict[str, Any]]
    phone: str | None
    distance_km: float | None
    sites: list[SiteHit] = field(default_factory=list)


def search_params(q: DirectoryQuery) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = [("active", "true"), ("_count", "200")]
    if q.service is not None:
        if q.service not in directory_codes():
            raise InvalidRequestError(
                f"service: '{q.service}' is not a service code; use one of: "
                + ", ".join(directory_codes()),
                issues=[
                    Issue(
                        "error",
                        "code-invalid",
                        f"service '{q.service}' is not in {SERVICE_SYSTEM}",
                        ("service",),
                    )
                ],
            )
        params.append(("service-type:below", f"{SERVICE_SYSTEM}|{q.service}"))
    if q.accepting is not None:
        code = ACCEPTING if q.accepting else NOT_ACCEPTING
        params.append(("characteristic", f"{CHARACTERISTIC_SYSTEM}|{code}"))
    if q.language:
        params.append(("communication", q.language))
    if q.latitude is not None and q.longitude is not None and q.within_km is not None:
        params.append(("location.near", f"{q.latitude}|{q.longitude}|{q.within_km}|km"))
    return params


async def find_services(ctx: WorkflowContext, q: DirectoryQuery) -> list[ServiceHit]:
    request = wf.parse_search_params(ctx, "HealthcareService", search_params(q), strict=True)
    ctx.audit_notes.interaction = ctx.audit_notes.interaction or "search-type"
    ctx.audit_notes.search = ("HealthcareService", request.canonical_params())
    services: list[dict[str, Any]] = []
    async with read_connection(ctx.engine) as conn:
        async for page in wf.search_pages(conn, ctx, request):
            services += [wf.loads(m) for m in page.matches if m.raw]
            if len(services) > MAX_CANDIDATES:
                raise InvalidRequestError(
                    f"More than {MAX_CANDIDATES} services match: narrow the search (service, "
                    "near and within_km, accepting, language)",
                    issues=[Issue("error", "too-costly", "too many matches", ("within_km",))],
                )
        locations = await _by_id(conn, ctx, "Location", _refs(services, "location"))
        organizations = await _by_id(conn, ctx, "Organization", _refs(services, "providedBy"))
    hits = [h for s in services if (h := _hit(s, locations, organizations, q)) is not None]
    hits.sort(
        key=lambda h: (
            h.distance_km if h.distance_km is not None else float("inf"),
            (h.name or "").casefold(),
            h.healthcare_service,
        )
    )
    return hits[: q.limit]


def _refs(services: list[dict[str, Any]], element: str) -> set[str]:
    out: set[str] = set()
    for body in services:
        value = body.get(element)
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                out.add(ref["reference"])
    return out


async def _by_id(
    conn: Any, ctx: WorkflowContext, resource_type: str, refs: set[str]
) -> dict[str, dict[str, Any]]:
    ids = sorted(r.split("/", 1)[1] for r in refs if r.startswith(f"{resource_type}/"))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 100):
        request = wf.parse_search_params(
            ctx,
            resource_type,
            [("_id", ",".join(ids[start : start + 100])), ("_count", "100")],
            strict=True,
        )
        page = await wf.search_in(conn, ctx, request)
        found.update({f"{resource_type}/{m.id}": wf.loads(m) for m in page.matches if m.raw})
    return found


def _hit(
    service: dict[str, Any],
    locations: dict[str, dict[str, Any]],
    organizations: dict[str, dict[str, Any]],
    q: DirectoryQuery,
) -> ServiceHit | None:
    sites: list[SiteHit] = []
    for ref in service.get("location") or []:
        body = locations.get((ref or {}).get("reference", ""))
        if body is None:
            continue
        position = position_of(body)
        distance = None
        if position is not None and q.latitude is not None and q.longitude is not None:
            distance = distance_km(q.latitude, q.longitude, *position)
            if q.within_km is not None and distance > q.within_km * (1 + 1e-9):
                continue  # another of the service's sites is the one within reach
            distance = round(distance, 2)
        address = body.get("address") or {}
        sites.append(
            SiteHit(
                location_id=f"Location/{body['id']}",
                name=body.get("name"),
                address=", ".join([*(address.get("line") or []), address.get("city") or ""]).strip(
                    ", "
                )
                or None,
                city=address.get("city"),
                latitude=position[0] if position else None,
                longitude=position[1] if position else None,
                distance_km=distance,
            )
        )
    if q.within_km is not None and not any(s.distance_km is not None for s in sites):
        return None
    sites.sort(key=lambda s: s.distance_km if s.distance_km is not None else float("inf"))
    provider = (service.get("providedBy") or {}).get("reference")
    org = organizations.get(provider or "")
    return ServiceHit(
        healthcare_service=f"HealthcareService/{service['id']}",
        organization=provider,
        organization_name=(org or {}).get("name")
        or (service.get("providedBy") or {}).get("display"),
        name=service.get("name"),
        services=[
            c["code"]
            for t in service.get("type") or []
            for c in t.get("coding") or []
            if c.get("system") == SERVICE_SYSTEM
        ],
        accepting_new_patients=accepting_of(service),
        languages=[
            c["code"]
            for concept in service.get("communication") or []
            for c in concept.get("coding") or []
            if "code" in c
        ],
        eligibility=[
            text
            for e in service.get("eligibility") or []
            for text in ((e.get("code") or {}).get("text"), e.get("comment"))
            if text
        ],
        hours=list(service.get("availableTime") or []),
        phone=next(
            (t.get("value") for t in service.get("telecom") or [] if t.get("system") == "phone"),
            None,
        ),
        distance_km=sites[0].distance_km if sites and sites[0].distance_km is not None else None,
        sites=sites,
    )
