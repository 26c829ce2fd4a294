"""JMS and program API: overdose education and naloxone distribution (/v1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.deps import AuditedRoute, ContextDep
from service.api.headers import IdempotencyKey
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import Day, Instant, Intercept, JmsRequest, PersonIn, StaffIn
from service.api.routes.v1_record_views import (
    NaloxoneRecordView,
    NaloxoneSummary,
    OverdoseResponseView,
    OverdoseRiskPrefill,
)
from service.features.naloxone import records as wf
from service.features.naloxone.prefill import overdose_risk_prefill
from service.features.naloxone.summary import (
    METRICS,
    GroupBy,
    SummaryQuery,
    naloxone_summary,
    summary_csv,
)
from service.fhir import oend_codes as oend
from service.workflows import idempotency

router = APIRouter(prefix="/v1", tags=["Naloxone (OEND)"], route_class=AuditedRoute)

Setting = Literal[
    "at-release",
    "in-custody",
    "court",
    "community-supervision",
    "community",
    "post-overdose-outreach",
    "other",
]
Relationship = Literal[
    "parent",
    "mother",
    "father",
    "spouse",
    "partner",
    "sibling",
    "child",
    "grandparent",
    "other-family",
    "friend",
    "roommate",
]
ResponderRole = Literal[
    "lay-person",
    "family-member",
    "peer",
    "outreach-worker",
    "program-staff",
    "first-responder",
    "self",
    "unknown",
]
Outcome = Literal["survived", "transported", "died", "unknown"]
assert set(oend.SETTINGS) == set(Setting.__args__)  # type: ignore[attr-defined]
assert set(oend.RELATIONSHIPS) == set(Relationship.__args__)  # type: ignore[attr-defined]
assert set(oend.RESPONDER_ROLES) == set(ResponderRole.__args__)  # type: ignore[attr-defined]
assert set(oend.OUTCOMES) == set(Outcome.__args__)  # type: ignore[attr-defined]

FacilityRef = Annotated[str, Field(pattern=r"^(Location|Organization)/[A-Za-z0-9\-\.]{1,64}$")]
PRODUCT_DOC = "Naloxone product: " + "; ".join(
    f"`{k}` = RxNorm {p.rxnorm} ({p.display})" for k, p in oend.PRODUCTS.items()
)
# Checked with quantity, date and facility so that one 422 lists all of them; the schema still
# documents the vocabulary.
ProductKey = Annotated[
    str,
    Field(max_length=64, description=PRODUCT_DOC, json_schema_extra={"enum": list(oend.PRODUCTS)}),
]


def _staff(staff: StaffIn | None) -> wf.Staff | None:
    return wf.Staff(name=staff.name, role=staff.role, staff_id=staff.id) if staff else None


class FamilyMemberIn(BaseModel):
    """The family member or friend who took the kit (a FHIR RelatedPerson of the person)."""

    model_config = ConfigDict(extra="forbid")
    relationship: Relationship
    family_name: str | None = Field(None, min_length=1, max_length=100)
    given_names: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=5
    )
    phone: str | None = Field(None, max_length=40, description="Only if they consented")


# NaloxoneIn._shape in JSON Schema: a named person and the staff member who gave the kit, or an
# anonymous kit handed to that person; family_member exactly when a family member took it.
KIT_SHAPE: dict[str, Any] = {
    "oneOf": [
        {
            "properties": {
                "anonymous": {"const": True},
                "person": {"type": "null"},
                "received_by": {"const": "person"},
                "family_member": {"type": "null"},
            },
            "required": ["anonymous"],
        },
        {
            "properties": {
                "anonymous": {"const": False},
                "person": {"type": "object"},
                "given_by": {"type": "object"},
            },
            "required": ["person", "given_by"],
        },
    ],
    "if": {"properties": {"received_by": {"const": "family-member"}}, "required": ["received_by"]},
    "then": {"properties": {"family_member": {"type": "object"}}, "required": ["family_member"]},
    "else": {"properties": {"family_member": {"type": "null"}}},
}


class NaloxoneIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "person": PersonIn.model_config["json_schema_extra"]["example"],  # type: ignore[index]
                "setting": "at-release",
                "facility": "Location/demo-county-jail-site",
                "given_by": {"id": "S-77", "name": "Jordan Lee", "role": "nurse"},
                "given_at": "2026-11-26T08:10:00-05:00",
                "product": "naloxone-4mg-nasal",
                "quantity": 2,
                "education_given": True,
                "received_by": "person",
                "intercept": 4,
            },
            **KIT_SHAPE,
        },
    )
    person: PersonIn | None = Field(None, description="The person the kit is for")
    anonymous: bool = Field(
        False, description="true for a kit to an unnamed person: no person data is stored"
    )
    setting: Setting = "at-release"
    facility: FacilityRef | None = Field(None, description="Location/<id> or Organization/<id>")
    place: str | None = Field(None, min_length=1, max_length=200, description="Where, as text")
    given_by: StaffIn | None = Field(None, description="Staff member (required unless anonymous)")
    given_at: Instant = Field(description="When the kit was handed over (with time zone)")
    product: ProductKey
    quantity: int = Field(
        description="Kits given (1 to HANDOFF_NALOXONE_MAX_QUANTITY)",
        json_schema_extra={"minimum": 1},
    )
    education_given: bool = Field(description="Overdose education given with the kit?")
    received_by: Literal["person", "family-member"] = "person"
    family_member: FamilyMemberIn | None = None
    intercept: Intercept

    @model_validator(mode="after")
    def _shape(self) -> NaloxoneIn:
        if self.anonymous == (self.person is not None):
            raise ValueError("give the person, or anonymous: true for an unnamed recipient")
        if self.anonymous and (self.received_by != "person" or self.family_member):
            raise ValueError("an anonymous kit has no family member (record the person instead)")
        if not self.anonymous and self.given_by is None:
            raise ValueError("given_by: the staff member is required for a kit to a person")
        if (self.received_by == "family-member") != (self.family_member is not None):
            raise ValueError("family_member is given exactly when received_by is family-member")
        return self

    def to_domain(self) -> wf.NaloxoneInput:
        member = self.family_member
        return wf.NaloxoneInput(
            person=self.person.to_domain() if self.person else None,
            setting=self.setting,
            facility=self.facility,
            place=self.place,
            given_by=None if self.anonymous else _staff(self.given_by),
            given_at=self.given_at,
            product=self.product,
            quantity=self.quantity,
            education_given=self.education_given,
            family_member=wf.FamilyMember(
                relationship=member.relationship,
                family_name=member.family_name,
                given_names=list(member.given_names),
                phone=member.phone,
            )
            if member
            else None,
            intercept=self.intercept,
        )


class OverdoseResponseIn(JmsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "occurred_at": "2026-11-25T23:40:00-05:00",
                "place": "Riverside park",
                "naloxone_doses": 2,
                "naloxone_product": "naloxone-4mg-nasal",
                "outcome": "survived",
                "administered_by": "peer",
                "reported_by": "outreach-worker",
                "intercept": 0,
            }
        },
    )
    person: PersonIn | None = Field(None, description="The person, if known (optional)")
    occurred_at: Instant = Field(description="When naloxone was given (with time zone)")
    facility: FacilityRef | None = None
    place: str | None = Field(None, min_length=1, max_length=200, description="Where, as text")
    naloxone_doses: int = Field(
        description="Doses given (1-20)", json_schema_extra={"minimum": 1, "maximum": wf.MAX_DOSES}
    )
    naloxone_product: ProductKey | None = None
    outcome: Outcome
    administered_by: ResponderRole = Field(description="Who gave the naloxone")
    reported_by: ResponderRole = Field(description="Who reported it")
    recorded_by: StaffIn | None = Field(None, description="Staff member who took the report")
    intercept: Intercept | None = None

    def to_domain(self) -> wf.OverdoseResponseInput:
        return wf.OverdoseResponseInput(
            person=self.person.to_domain() if self.person else None,
            occurred_at=self.occurred_at,
            facility=self.facility,
            place=self.place,
            doses=self.naloxone_doses,
            product=self.naloxone_product,
            outcome=self.outcome,
            responder_role=self.administered_by,
            reporter_role=self.reported_by,
            recorded_by=_staff(self.recorded_by),
            intercept=self.intercept,
        )


@router.post(
    "/naloxone",
    status_code=201,
    summary="Record a naloxone kit (and overdose education)",
    responses={**V1_ERRORS, 201: {"description": "Recorded", "model": NaloxoneRecordView}},
)
async def create_naloxone(
    payload: NaloxoneIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """A kit to a known person becomes a MedicationDispense (plus a Procedure when education
    was given, and a RelatedPerson when a family member took the kit); an anonymous kit
    (`anonymous: true`, no `person`) becomes a SupplyDelivery that stores nothing about the
    recipient. One transaction; a retry with the same `Idempotency-Key` returns the original
    result. An unknown product, a quantity below 1 or above the configured maximum, a future
    `given_at` and an unknown facility are reported together in one 422. Kit records a program
    writes through FHIR itself (a naloxone MedicationDispense or SupplyDelivery) are held to
    the same quantity and date limits."""
    idempotency.check_key(idempotency_key)
    status, body = await wf.record_naloxone(
        ctx,
        payload.to_domain(),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(payload.model_dump(mode="json")),
    )
    return JSONResponse(body, status_code=status)


@router.post(
    "/overdose-responses",
    status_code=201,
    summary="Report an overdose response with naloxone",
    responses={**V1_ERRORS, 201: {"description": "Recorded", "model": OverdoseResponseView}},
)
async def create_overdose_response(
    payload: OverdoseResponseIn,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Stored as an Observation (code `oend#overdose-response`): the outcome as its value, the
    doses, who gave the naloxone, who reported it, the product and place as components. The
    person is optional."""
    idempotency.check_key(idempotency_key)
    status, body = await wf.record_overdose_response(
        ctx,
        payload.to_domain(),
        idempotency_key=idempotency_key,
        fingerprint=idempotency.request_hash(payload.model_dump(mode="json")),
    )
    return JSONResponse(body, status_code=status)


SUMMARY_DOC = """Counts over the period (`from`/`to`: calendar days as recorded, inclusive),
optionally for one facility (an Organization includes the Locations it manages) and grouped
by `month`, `facility` or `intercept`. Only records the caller may see are counted.

* `kits_total` = `kits_to_known_people` + `kits_anonymous` (kits = the records' quantity);
  `kits_to_family_members` is the part of `kits_to_known_people` a family member took.
* `people_given_kits`, `people_trained`: distinct people (trained: family members included);
  `anonymous_education`: anonymous kits given with education.
* `releases`: release events (a person's referral release windows, overlapping ones merged)
  starting in the period; `releases_with_kit`: those with a kit handed to the person
  themself inside the window (`occurrencePeriod`, or the expected release ± 1 day).
* `overdose_responses_reported`, `reversals_reported` (survived or transported),
  `deaths_reported`.

Distinct counts are per group. CSV (`format=csv` or `Accept: text/csv`): one row per group,
then a `total` row."""


@router.get(
    "/naloxone/summary",
    summary="Naloxone distribution, training, releases with a kit, reversals",
    description=SUMMARY_DOC,
    responses={
        **V1_ERRORS,
        200: {
            "description": "The figures",
            "model": NaloxoneSummary,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "group,label," + ",".join(METRICS) + "\r\n",
                },
            },
        },
    },
)
async def summary(
    ctx: ContextDep,
    facility: Annotated[
        str | None,
        Query(
            pattern=r"^(Location|Organization)/[A-Za-z0-9\-\.]{1,64}$",
            description="Location/<id> or Organization/<id>",
        ),
    ] = None,
    date_from: Annotated[Day | None, Query(alias="from")] = None,
    date_to: Annotated[Day | None, Query(alias="to")] = None,
    group_by: GroupBy | None = None,
    format: Literal["json", "csv"] | None = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    figures = await naloxone_summary(
        ctx,
        SummaryQuery(facility=facility, date_from=date_from, date_to=date_to, group_by=group_by),
    )
    wants_csv = format == "csv" or (format is None and "text/csv" in (accept or "").lower())
    if wants_csv:
        return Response(
            summary_csv(figures),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="naloxone-summary.csv"'},
        )
    return JSONResponse(figures)


@router.get(
    "/people/{patient_id}/prefill/overdose-risk",
    summary="Suggested answers for the overdose-risk checklist",
    response_model=None,
    responses={
        **V1_ERRORS,
        200: {"description": "Suggested answers and their sources", "model": OverdoseRiskPrefill},
    },
)
async def prefill_overdose_risk(
    patient_id: str,
    ctx: ContextDep,
    release_at: Annotated[
        Instant | None,
        Query(description="The release to check (± 1 day); default: the person's referrals"),
    ] = None,
) -> dict[str, Any]:
    """`answers` holds suggested answers keyed by item linkId, ready to pre-fill the form; for
    now `naloxone-in-hand: true` when a naloxone kit was handed to the person themself inside a
    release window (`suggestions` names the MedicationDispense). No suggestion means nothing is
    recorded, not "no kit". The assessor confirms or changes it: POST /v1/assessments stores
    what the assessor submits."""
    return await overdose_risk_prefill(ctx, patient_id, release_at=release_at)
