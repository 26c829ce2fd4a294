"""JMS API: warm-handoff referrals (/v1/referrals)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.api.deps import AuditedRoute, ContextDep
from service.api.headers import IdempotencyKey
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import Instant, Intercept, JmsRequest, PersonIn, StaffIn
from service.api.routes.v1_views import ReferralView
from service.features import referrals as wf
from service.features.custody.referrals import prepare_referral
from service.fhir.codes import PROGRAM_TYPES, SERVICES
from service.workflows import idempotency

router = APIRouter(prefix="/v1/referrals", tags=["JMS: referrals"], route_class=AuditedRoute)

ServiceKey = Literal[
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
ProgramType = Literal[
    "jail-reentry",
    "jail-health",
    "drug-court",
    "pretrial",
    "diversion",
    "community-corrections",
    "post-overdose-outreach",
    "crisis-response",
    "deflection",
    "probation",
    "parole",
    "other",
]
assert set(SERVICES) == set(ServiceKey.__args__)  # type: ignore[attr-defined]
assert set(PROGRAM_TYPES) == set(ProgramType.__args__)  # type: ignore[attr-defined]
Reference = Annotated[str, Field(pattern=r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-\.]{1,64}$")]


def _of_types(*types: str) -> Callable[[str | None], str | None]:
    """A field validator: the reference, if given, names one of ``types``."""
    names = " or ".join(f"{t}/<id>" for t in types)

    def check(value: str | None) -> str | None:
        if value is not None and value.split("/", 1)[0] not in types:
            raise ValueError(f"must be {names}, not {value}")
        return value

    return check


def _naming(*types: str) -> dict[str, Any]:
    """The schema of a reference to one of ``types`` (_of_types checks it, and says why)."""
    return {"pattern": f"^({'|'.join(types)})/[A-Za-z0-9\\-\\.]{{1,64}}$"}


def _named(name: str) -> dict[str, Any]:
    return {"properties": {name: {"type": "string"}}, "required": [name]}


# The receiver is exactly one of an organization or one of its services.
ONE_RECEIVER: dict[str, Any] = {
    "oneOf": [_named("receiving_organization"), _named("receiving_service")]
}


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expected_at: Instant = Field(description="Expected release date and time (with zone)")
    window_end: Instant | None = Field(None, description="Latest expected release")
    location: str | None = Field(None, max_length=200, description="e.g. the jail's release gate")

    @model_validator(mode="after")
    def _sane(self) -> ReleaseIn:
        if self.expected_at < dt.datetime.now(dt.UTC) - dt.timedelta(hours=1):
            raise ValueError("expected_at is in the past: refer before release")
        if self.window_end is not None and self.window_end < self.expected_at:
            raise ValueError("window_end is before expected_at")
        return self


class ReferralIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "referral_id": "JMS-REF-2026-1187",
                "person": PersonIn.model_config["json_schema_extra"]["example"],  # type: ignore[index]
                "referred_by": {"id": "S-77", "name": "Jordan Lee", "role": "peer-specialist"},
                "intercept": 4,
                "program_type": "jail-reentry",
                "release": {
                    "expected_at": "2030-06-01T08:00:00-05:00",  # calendar: fixed (Swagger example)
                    "location": "Main gate, 100 Main St",
                },
                "services": ["moud-buprenorphine", "peer-support"],
                "receiving_organization": "Organization/demo-otp",
                "priority": "urgent",
                "notes": "On buprenorphine 16 mg daily in custody; wants to continue.",
                "contact_directly": True,
            },
            **ONE_RECEIVER,
        },
    )
    referral_id: str | None = Field(
        None, min_length=1, max_length=64, description="The JMS's own referral id (dedupes retries)"
    )
    person: PersonIn
    referred_by: StaffIn
    facility: Reference | None = Field(
        None,
        description="Referring facility (Location/Organization)",
        json_schema_extra=_naming("Location", "Organization"),
    )
    intercept: Intercept
    program_type: ProgramType = "jail-reentry"
    release: ReleaseIn | None = Field(
        None,
        description="Needed at intercepts 2-4 unless person.booking_number is a custody stay "
        "(POST /v1/bookings), whose expected or recorded release the referral then follows; "
        "community referrals (intercepts 0, 1, 5) have none",
    )
    services: list[ServiceKey] = Field(
        min_length=1, max_length=9, json_schema_extra={"uniqueItems": True}
    )
    receiving_organization: Reference | None = Field(
        None, json_schema_extra=_naming("Organization")
    )
    receiving_service: Reference | None = Field(
        None, description="HealthcareService/<id>", json_schema_extra=_naming("HealthcareService")
    )
    priority: Literal["routine", "urgent", "asap", "stat"] = "routine"
    notes: str | None = Field(None, max_length=2000)
    contact_directly: bool = Field(
        False, description="May the receiving organization contact the person directly?"
    )
    supporting_info: list[Reference] = Field(
        default_factory=list, max_length=20, description="Assessments already recorded"
    )

    # Each reference's type checked on its own field, so that every wrong one is reported at
    # once, at its own path.
    _facility = field_validator("facility")(_of_types("Location", "Organization"))
    _organization = field_validator("receiving_organization")(_of_types("Organization"))
    _service = field_validator("receiving_service")(_of_types("HealthcareService"))

    @model_validator(mode="after")
    def _receiver(self) -> ReferralIn:
        if bool(self.receiving_organization) == bool(self.receiving_service):
            raise ValueError("give exactly one of receiving_organization or receiving_service")
        if len(set(self.services)) != len(self.services):
            raise ValueError("services lists a service twice")
        return self

    def to_domain(self) -> wf.ReferralInput:
        return wf.ReferralInput(
            jms_referral_id=self.referral_id,
            person=self.person.to_domain(),
            referred_by_name=self.referred_by.name,
            referred_by_role=self.referred_by.role,
            referred_by_id=self.referred_by.id,
            facility=self.facility,
            intercept=self.intercept,
            program_type=self.program_type,
            release_at=self.release.expected_at if self.release else None,
            release_window_end=self.release.window_end if self.release else None,
            release_location=self.release.location if self.release else None,
            services=list(self.services),
            receiver=self.receiving_organization or self.receiving_service or "",
            priority=self.priority,
            notes=self.notes,
            contact_directly=self.contact_directly,
            supporting_info=list(self.supporting_info),
        )


class CancelIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"reason": "Transferred to another county before release"}},
    )
    reason: str = Field(min_length=3, max_length=500)


class ReleaseChangeIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "release": {
                    "expected_at": "2030-06-02T08:00:00-05:00",  # calendar: fixed (Swagger example)
                    "location": "Main gate, 100 Main St",
                }
            }
        },
    )
    release: ReleaseIn


class ReReferIn(JmsRequest):
    # The demo's recovery community organization (after the first receiver rejected).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"receiving_organization": "Organization/demo-peer-support"},
            **ONE_RECEIVER,
        },
    )
    receiving_organization: Reference | None = Field(
        None, json_schema_extra=_naming("Organization")
    )
    receiving_service: Reference | None = Field(
        None, json_schema_extra=_naming("HealthcareService")
    )

    _organization = field_validator("receiving_organization")(_of_types("Organization"))
    _service = field_validator("receiving_service")(_of_types("HealthcareService"))

    @model_validator(mode="after")
    def _one_receiver(self) -> ReReferIn:
        if bool(self.receiving_organization) == bool(self.receiving_service):
            raise ValueError("give exactly one of receiving_organization or receiving_service")
        return self

    @property
    def receiver(self) -> str:
        return self.receiving_organization or self.receiving_service or ""


_VIEW: dict[int | str, dict[str, Any]] = {
    **V1_ERRORS,
    200: {"description": "The referral as it now is", "model": ReferralView},
}

# What can be done with a referral once made (OpenAPI links: Swagger UI shows them, API testers
# follow them).
_BY_ID = {"referral_id": "$response.body#/referral_id"}
_REFERRAL_LINKS = {
    name: {"operationId": operation, "parameters": _BY_ID}
    for name, operation in {
        "status": "get_referral_v1_referrals__referral_id__get",
        "cancel": "cancel_referral_v1_referrals__referral_id__cancel_post",
        "change_release": "change_release_v1_referrals__referral_id__patch",
        "re_refer": "re_refer_v1_referrals__referral_id__re_refer_post",
    }.items()
}


@router.post(
    "",
    status_code=201,
    summary="Refer a person before release (warm handoff)",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {"description": "This referral_id was already received", "model": ReferralView},
        201: {"description": "Referred", "model": ReferralView, "links": _REFERRAL_LINKS},
    },
)
async def create_referral(
    payload: ReferralIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Creates or updates the Patient (matched by the jail's identifiers), a ServiceRequest and
    a Task for the receiving organization in one transaction. A retry with the same
    `Idempotency-Key`, or the same `referral_id`, returns the original referral."""
    idempotency.check_key(idempotency_key)
    status, body = await wf.open_referral(
        ctx,
        payload.to_domain(),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(payload.model_dump(mode="json")),
        resolve_stay=prepare_referral,
    )
    return JSONResponse(body, status_code=status)


@router.get(
    "",
    summary="The jail's referral worklist",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {
            "description": "Referrals, soonest release first (JSON, or CSV with format=csv)",
            "headers": {
                "Link": {
                    "description": 'With `limit`, when more follow: `<url>; rel="next"`',
                    "schema": {"type": "string"},
                }
            },
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/ReferralView"},
                    }
                },
                "text/csv": {"schema": {"type": "string"}},
            },
        },
    },
)
async def list_referrals(
    request: Request,
    ctx: ContextDep,
    facility: Annotated[str | None, Query(description="Referring facility reference")] = None,
    release_from: Annotated[
        Instant | None,
        Query(description="Expected release at or after this instant (with a time zone)"),
    ] = None,
    release_to: Annotated[
        Instant | None,
        Query(description="Expected release at or before this instant (with a time zone)"),
    ] = None,
    status: Annotated[
        str | None,
        Query(description="Task statuses, comma-separated (e.g. requested,rejected)"),
    ] = None,
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="csv: the worklist as a spreadsheet (or send Accept: text/csv)"),
    ] = None,
    limit: Annotated[
        int | None,
        Query(ge=1, le=500, description="Page size (default: the whole list in one answer)"),
    ] = None,
    after: Annotated[
        str | None,
        Query(max_length=500, description="Where the page starts: from the `next` Link header"),
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """E.g. people released in the next 72 hours whose referral is not yet accepted:
    `?release_from=<now>&release_to=<now+72h>&status=requested,rejected` (a `+` in a time
    zone is written `%2B` in a query string; or give UTC with `Z`). Each item carries the
    person's name and booking number (when the caller may see the Patient), the facility and
    its name, expected release, services, the receiving organization and its name, status and
    milestone.
    Lists at most `HANDOFF_WORKLIST_MAX_REFERRALS` (2,000) referrals: a window holding more
    answers 422 (`too-costly`), never a list cut short. `format=csv` (or `Accept: text/csv`)
    gives the same list as CSV.

    Paging: with `limit`, an answer holds at most that many referrals and, when more follow, a
    `Link: <…>; rel="next"` header (RFC 8288) whose URL asks for the next page (`after`, a
    position in the list: referrals added or gone meanwhile shift nothing)."""
    statuses = {s.strip() for s in status.split(",")} if status else None
    views = await wf.list_referrals(
        ctx, facility=facility, release_from=release_from, release_to=release_to, statuses=statuses
    )
    views, following = wf.worklist_page(views, after=after, limit=limit)
    headers = {}
    if following is not None:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
        url = f"{ctx.base_url.removesuffix('/fhir')}/v1/referrals?"
        headers["Link"] = f'<{url}{urlencode([*query, ("after", following)])}>; rel="next"'
    if format == "csv" or (format is None and "text/csv" in (accept or "")):
        return Response(
            worklist_csv(views),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="referrals.csv"', **headers},
        )
    return JSONResponse(views, headers=headers)


WORKLIST_COLUMNS = (
    "referral_id",
    "jms_referral_id",
    "family_name",
    "given_names",
    "booking_number",
    "facility",
    "facility_name",
    "expected_release",
    "services",
    "receiving_organization",
    "receiving_organization_name",
    "status",
    "milestone",
)


def worklist_csv(views: list[dict[str, Any]]) -> str:
    """One line per referral; lists joined with spaces; what the caller may not see is empty."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(WORKLIST_COLUMNS)
    for v in views:
        person = v.get("person") or {}
        milestone = v.get("business_status") or {}
        writer.writerow(
            [
                v["referral_id"],
                v.get("jms_referral_id") or "",
                person.get("family_name") or "",
                " ".join(person.get("given_names") or []),
                person.get("booking_number") or "",
                v.get("facility") or "",
                v.get("facility_name") or "",
                v["release"].get("expected_at") or "",
                " ".join(v.get("services") or []),
                v.get("owner") or "",
                v.get("receiving_organization_name") or "",
                v.get("status") or "",
                milestone.get("code") or milestone.get("display") or "",
            ]
        )
    return out.getvalue()


@router.get(
    "/escalations",
    summary="Referrals to act on: release soon and not accepted, or a missed appointment",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "Referrals", "model": list[ReferralView]}},
)
async def escalations(
    ctx: ContextDep,
    within_hours: Annotated[int, Query(ge=1, le=24 * 14)] = 72,
) -> list[dict[str, Any]]:
    """Referrals whose release is within `within_hours` (or passed in the last day) and whose
    Task is still requested, rejected or failed, or whose person was released unplanned; and
    taken referrals whose person missed the first appointment (`business_status` no-show, shown
    where the receiving program's consent lets you see its milestones): the jail's staff
    should act now."""
    return await wf.escalations(ctx, within=dt.timedelta(hours=within_hours), no_shows=True)


@router.get(
    "/{referral_id}",
    summary="Status and timeline of a referral",
    response_model=None,
    responses=_VIEW,
)
async def get_referral(referral_id: str, ctx: ContextDep) -> dict[str, Any]:
    """Current Task status and business status, owner, outcomes, and the timeline of every
    change (from the Tasks' history) with reasons."""
    return await wf.get_referral(ctx, referral_id)


@router.post(
    "/{referral_id}/cancel", summary="Cancel a referral", response_model=None, responses=_VIEW
)
async def cancel_referral(referral_id: str, payload: CancelIn, ctx: ContextDep) -> dict[str, Any]:
    return await wf.cancel_referral(ctx, referral_id, reason=payload.reason)


@router.patch(
    "/{referral_id}", summary="Change the release date/time", response_model=None, responses=_VIEW
)
async def change_release(
    referral_id: str, payload: ReleaseChangeIn, ctx: ContextDep
) -> dict[str, Any]:
    return await wf.change_release(
        ctx,
        referral_id,
        release_at=payload.release.expected_at,
        window_end=payload.release.window_end,
        location=payload.release.location,
    )


@router.post(
    "/{referral_id}/re-refer",
    summary="Refer to another organization after a rejection",
    response_model=None,
    responses=_VIEW,
)
async def re_refer(referral_id: str, payload: ReReferIn, ctx: ContextDep) -> dict[str, Any]:
    return await wf.re_refer(ctx, referral_id, receiver=payload.receiver)
