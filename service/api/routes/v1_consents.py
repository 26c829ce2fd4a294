"""JMS API: 42 CFR Part 2 consents and the accounting of disclosures (/v1)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.api.deps import AuditedRoute, ContextDep
from service.api.headers import IdempotencyKey
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import Instant, JmsRequest, PersonIn
from service.api.routes.v1_record_views import Disclosure, DisclosuresPage
from service.api.routes.v1_views import ConsentView
from service.domain.binary import is_base64
from service.features.consents import records as wf
from service.features.consents.disclosures import list_disclosures
from service.workflows import idempotency

router = APIRouter(prefix="/v1", tags=["JMS: consent and disclosures"], route_class=AuditedRoute)

Purpose = Literal["TREAT", "HPAYMT", "HOPERAT", "COC"]


class FormIn(BaseModel):
    """The signed form: inline (base64) or a link to where the facility keeps it."""

    model_config = ConfigDict(extra="forbid")
    content_type: Literal["application/pdf", "image/png", "image/jpeg", "image/tiff"]
    data: str | None = Field(None, description="base64, at most ~3 MB")
    url: str | None = Field(None, pattern=r"^https://")
    title: str | None = None

    @field_validator("data")
    @classmethod
    def _base64(cls, data: str | None) -> str | None:
        if data is not None and not is_base64(data):
            raise ValueError("not base64 (A-Z, a-z, 0-9, +, / and = padding)")
        return data

    @model_validator(mode="after")
    def _one(self) -> FormIn:
        if bool(self.data) == bool(self.url):
            raise ValueError("give the form's data (base64) or its url, not both")
        return self


def _treatment() -> list[Purpose]:
    return ["TREAT"]


class ConsentIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "person": PersonIn.model_config["json_schema_extra"]["example"],  # type: ignore[index]
                "signed_at": "2026-11-25T14:00:00-05:00",
                "signed_by": "Dana Rivera (self)",
                "recipients": ["Organization/demo-otp"],
                "purposes": ["TREAT"],
                "expires": "2030-05-25T00:00:00-05:00",  # calendar: fixed (Swagger example)
            }
        },
    )
    person: PersonIn
    signed_at: Instant
    signed_by: str = Field(min_length=2, max_length=200, description="The person or representative")
    recipients: list[Annotated[str, Field(pattern=r"^Organization/[A-Za-z0-9\-\.]{1,64}$")]] = (
        Field(min_length=1, max_length=20)
    )
    purposes: list[Purpose] = Field(default_factory=_treatment, min_length=1)
    expires: Instant | None = None
    form: FormIn | None = None

    @model_validator(mode="after")
    def _dates(self) -> ConsentIn:
        if self.signed_at > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5):
            raise ValueError("signed_at is in the future")
        if self.expires is not None and self.expires <= self.signed_at:
            raise ValueError("expires is not after signed_at")
        if self.expires is not None and self.expires <= dt.datetime.now(dt.UTC):
            raise ValueError(
                "expires is in the past: an expired consent authorizes nothing; record it only "
                "while it is in force"
            )
        return self


class RevokeIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"reason": "Revoked by the person in writing"}},
    )
    reason: str = Field(min_length=3, max_length=500)


@router.post(
    "/consents",
    status_code=201,
    summary="Record a signed Part 2 consent",
    responses={
        **V1_ERRORS,
        201: {
            "description": "Recorded",
            "model": ConsentView,
            "links": {
                "revoke": {
                    "operationId": "revoke_consent_v1_consents__consent_id__revoke_post",
                    "parameters": {"consent_id": "$response.body#/consent_id"},
                }
            },
        },
    },
)
async def create_consent(
    payload: ConsentIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Stores a FHIR Consent (scope patient-privacy, category release of information, policy
    42 CFR Part 2) permitting disclosure of the person's SUD-labelled records to the named
    organizations for the named purposes until it expires or is revoked."""
    idempotency.check_key(idempotency_key)
    form: dict[str, str] | None = None
    if payload.form:
        form = {"contentType": payload.form.content_type}
        if payload.form.data:
            form["data"] = payload.form.data
        if payload.form.url:
            form["url"] = payload.form.url
        if payload.form.title:
            form["title"] = payload.form.title
    status, body = await wf.record_consent(
        ctx,
        person=payload.person.to_domain(),
        signed_at=payload.signed_at,
        signed_by=payload.signed_by,
        recipients=list(dict.fromkeys(payload.recipients)),
        purposes=list(dict.fromkeys(payload.purposes)),
        expires=payload.expires,
        form=form,
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(payload.model_dump(mode="json")),
    )
    return JSONResponse(body, status_code=status)


@router.post(
    "/consents/{consent_id}/revoke",
    summary="Revoke a consent",
    response_model=None,
    responses={**V1_ERRORS, 200: {"description": "Revoked", "model": ConsentView}},
)
async def revoke_consent(consent_id: str, payload: RevokeIn, ctx: ContextDep) -> dict[str, Any]:
    """Takes effect for the very next request, including pages fetched through `next` links."""
    return await wf.revoke_consent(ctx, consent_id, reason=payload.reason)


# The CSV has the JSON rows' columns, in the same order.
DISCLOSURE_FIELDS = list(Disclosure.model_fields)
DISCLOSURES_CSV = ",".join(DISCLOSURE_FIELDS) + "\r\n"


@router.get(
    "/patients/{patient_id}/disclosures",
    summary="Accounting of disclosures for one person (JSON or CSV)",
    responses={
        **V1_ERRORS,
        200: {
            "description": "A page of disclosures (JSON), or all of them (CSV)",
            "model": DisclosuresPage,
            "content": {"text/csv": {"schema": {"type": "string"}, "example": DISCLOSURES_CSV}},
        },
    },
)
async def disclosures(
    patient_id: str,
    request: Request,
    ctx: ContextDep,
    format: Annotated[Literal["json", "csv"] | None, Query()] = None,
    order: Annotated[Literal["newest", "oldest"], Query()] = "newest",
    count: Annotated[int, Query(ge=1, le=1000)] = 100,
    # A next link's token is short; 500 characters keep any URL within HANDOFF_MAX_URL_BYTES.
    page: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """Which organizations received which of the person's Part 2 records, when, and on which
    basis: a consent, a medical emergency, or a redacted view (`basis`: `consent`, `emergency`
    or `author or redacted view`), newest first unless `order=oldest`.

    JSON is paged: `disclosures` holds up to `count` disclosure events (each may list several
    records) and `next` the URL of the next page (null on the last). `Accept: text/csv` or
    `format=csv` gives the whole accounting as one spreadsheet, every page included."""
    newest = order == "newest"
    wants_csv = format == "csv" or (
        format is None and "text/csv" in request.headers.get("accept", "")
    )
    if not wants_csv:
        rows, following = await list_disclosures(
            ctx, patient_id, newest_first=newest, count=count, page=page
        )
        next_url = None
        if following is not None:
            query = urlencode({"order": order, "count": count, "page": following})
            base = ctx.base_url.removesuffix("/fhir")
            next_url = f"{base}/v1/patients/{patient_id}/disclosures?{query}"
        return JSONResponse({"disclosures": rows, "order": order, "next": next_url})
    rows, following = await list_disclosures(ctx, patient_id, newest_first=newest, count=1000)
    while following is not None:
        more, following = await list_disclosures(
            ctx, patient_id, newest_first=newest, count=1000, page=following
        )
        rows += more
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=DISCLOSURE_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="disclosures-{patient_id}.csv"'},
    )
