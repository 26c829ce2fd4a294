"""Response models of the JMS API's record views: instruments and assessments, custody stays,
naloxone records and figures, the overdose-risk prefill, disclosures and identity domains.

As with the referral views (v1_views), the routes keep sending the dicts their features build
(``response_model=None``); these models are what the OpenAPI contract and Swagger UI show, and
tests/api/test_response_views.py validates real answers against them with extra fields
forbidden, so the contract cannot drift from what is sent."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A FHIR primitive as the views pass it on: a code, a number, a boolean or a reference string.
Scalar = str | bool | int | float

_PATIENT = "3c4d5e6f708192a3b4c5d6e7f8091a2b"
_QR = "01a2465dc0357f17a050bf2ebe92af38"
_STAY = "01a2465dc1a574ba8384157a4eb01e7d"
_KIT = "01a2465dc2917721857c5ac82d30e8d5"


def _example(example: Any) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"example": example})


class Forbidding(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeDisplay(Forbidding):
    code: str | None
    display: str | None


# --- instruments ---------------------------------------------------------------------------------


class InstrumentSummary(BaseModel):
    """One instrument a JMS can present (GET /v1/instruments)."""

    model_config = _example(
        {
            "key": "dast-10",
            "title": "DAST-10 (Drug Abuse Screening Test, 10 items)",
            "url": "https://handoff.dev/fhir/Questionnaire/dast-10",
            "version": "1.0.0",
            "copyright": "Copyright (c) 1982 Harvey A. Skinner, PhD, and CAMH, Toronto.",
            "scored": True,
            "triage": False,
        }
    )
    key: str = Field(description="Use it in /v1/instruments/{key} and as `instrument`")
    title: str | None
    url: str | None = Field(description="The Questionnaire's canonical URL")
    version: str | None
    copyright: str | None
    scored: bool = Field(description="Whether the server computes a score")
    triage: bool = Field(description="Whether a triage rule flags high priority")


class Choice(Forbidding):
    code: Scalar | None = Field(description="What to send as the answer")
    system: str | None
    display: str | None
    score: int | float | None = Field(description="The choice's weight, if scored")


class EnableWhen(Forbidding):
    question: str | None = Field(description="The link_id the rule looks at")
    operator: str | None = Field(description="exists, =, !=, >, <, >=, <=")
    answer: Scalar | None


class Band(Forbidding):
    code: str | None
    display: str | None
    low: int | float | None
    high: int | float | None
    sex: str | None = Field(description="The band applies to this sex only (e.g. AUDIT-C)")


class InstrumentItem(Forbidding):
    link_id: str = Field(description="Answer the item by this id")
    text: str | None
    type: str = Field(description="FHIR item type: group, display, choice, integer, boolean...")
    required: bool
    repeats: bool
    read_only: bool
    calculated: bool = Field(description="Computed by the server (a score): do not send")
    hidden: bool
    help: str | None
    choices: list[Choice]
    allow_free_text: bool
    min: Scalar | None
    max: Scalar | None
    enable_when: list[EnableWhen] = Field(description="Show the item only while these hold")
    enable_behavior: str = Field(description="all or any of enable_when")
    bands: list[Band] = Field(description="Score bands (score items)")
    items: list[InstrumentItem] = Field(description="Children (groups, nested questions)")


class TriageCondition(Forbidding):
    factor: str
    display: str | None


class TriageRule(Forbidding):
    name: str
    version: str
    flag: CodeDisplay
    conditions: list[TriageCondition]


_ITEM = {
    "link_id": "dast-1",
    "text": "Have you used drugs other than those required for medical reasons?",
    "type": "choice",
    "required": True,
    "repeats": False,
    "read_only": False,
    "calculated": False,
    "hidden": False,
    "help": None,
    "choices": [
        {"code": "Y", "system": None, "display": "Yes", "score": 1},
        {"code": "N", "system": None, "display": "No", "score": 0},
    ],
    "allow_free_text": False,
    "min": None,
    "max": None,
    "enable_when": [],
    "enable_behavior": "all",
    "bands": [],
    "items": [],
}


class InstrumentView(BaseModel):
    """One instrument as simple JSON: what to ask, in order, and how it is scored."""

    model_config = _example(
        {
            "key": "dast-10",
            "url": "https://handoff.dev/fhir/Questionnaire/dast-10",
            "version": "1.0.0",
            "canonical": "https://handoff.dev/fhir/Questionnaire/dast-10|1.0.0",
            "title": "DAST-10 (Drug Abuse Screening Test, 10 items)",
            "status": "active",
            "description": "Ten yes/no questions about drug use in the past 12 months.",
            "copyright": "Copyright (c) 1982 Harvey A. Skinner, PhD, and CAMH, Toronto.",
            "items": [_ITEM],
            "triage": None,
        }
    )
    key: str | None
    url: str | None
    version: str | None
    canonical: str | None = Field(description="url|version, as a QuestionnaireResponse names it")
    title: str | None
    status: str | None
    description: str | None
    copyright: str | None
    items: list[InstrumentItem]
    triage: TriageRule | None = Field(description="The triage rule, if the instrument has one")


# --- assessments ---------------------------------------------------------------------------------


class Subscore(Forbidding):
    item: str = Field(description="The score item's link_id")
    group: str | None
    score: int | None
    band: CodeDisplay | None


class TriageResult(Forbidding):
    high_priority: bool
    result: str | None
    rule_version: str | None
    factors: list[CodeDisplay] = Field(description="The factors that triggered the flag")


class Mismatch(Forbidding):
    item: str
    submitted: Scalar | None = Field(description="The score the client sent")
    computed: Scalar | None = Field(description="The score the server computed (kept)")


class AssessmentLinks(Forbidding):
    fhir: str = Field(description="The FHIR QuestionnaireResponse")
    person: str = Field(description="The person's assessments")


class AssessmentView(BaseModel):
    """A recorded assessment: the stored response, its scores, band and triage."""

    model_config = _example(
        {
            "assessment_id": _QR,
            "patient_id": _PATIENT,
            "instrument": "dast-10",
            "questionnaire": "https://handoff.dev/fhir/Questionnaire/dast-10|1.0.0",
            "questionnaire_response": f"QuestionnaireResponse/{_QR}",
            "observations": ["Observation/01a2465dc07f710d95eced868cb3580f"],
            "administered_at": "2026-11-26T09:30:00-05:00",  # calendar: fixed (Swagger example)
            "intercept": 3,
            "score": 1,
            "band": {"code": "dast10-low", "display": "Low level"},
            "subscores": [],
            "triage": None,
            "mismatches": [],
            "links": {
                "fhir": f"http://127.0.0.1:8000/fhir/QuestionnaireResponse/{_QR}",
                "person": f"http://127.0.0.1:8000/v1/people/{_PATIENT}/assessments",
            },
        }
    )
    assessment_id: str = Field(description="The QuestionnaireResponse id")
    patient_id: str
    instrument: str | None
    questionnaire: str = Field(description="The instrument's canonical url|version")
    questionnaire_response: str
    observations: list[str] = Field(description="The derived score Observations")
    administered_at: str = Field(description="ISO 8601, as sent")
    intercept: int | None = Field(description="Sequential Intercept Model, 0-5")
    score: int | None
    band: CodeDisplay | None
    subscores: list[Subscore]
    triage: TriageResult | None
    mismatches: list[Mismatch] = Field(description="Client scores that differed from the server's")
    links: AssessmentLinks


class ResultComponent(Forbidding):
    code: str | None
    value: Scalar | dict[str, Any] | None = Field(description="A CodeableConcept, text or flag")


class AssessmentResult(Forbidding):
    observation: str
    code: str | None = Field(description="LOINC or local code of the result")
    display: str | None
    value: int | dict[str, Any] | None = Field(description="A score, or a CodeableConcept")
    interpretation: str | None
    components: list[ResultComponent]


class PersonAssessment(BaseModel):
    """One of a person's assessments, newest first."""

    model_config = _example(
        {
            "assessment_id": _QR,
            "questionnaire": "https://handoff.dev/fhir/Questionnaire/dast-10|1.0.0",
            "status": "completed",
            "administered_at": "2026-11-26T09:30:00-05:00",  # calendar: fixed (Swagger example)
            "administered_by": "Jordan Lee (Peer recovery specialist)",
            "results": [
                {
                    "observation": "Observation/01a2465dc07f710d95eced868cb3580f",
                    "code": "82667-7",
                    "display": "Total score [DAST-10]",
                    "value": 1,
                    "interpretation": "Low level",
                    "components": [],
                }
            ],
        }
    )
    assessment_id: str
    questionnaire: str | None
    status: str | None
    administered_at: str | None
    administered_by: str | None
    results: list[AssessmentResult]


# --- custody -------------------------------------------------------------------------------------


class StayRelease(Forbidding):
    released_at: str | None
    planned: bool | None
    release_type: str | None
    destination: str | None


class StayLocation(Forbidding):
    facility: str | None
    status: str | None = Field(description="active, completed...")
    from_: str | None = Field(alias="from")
    to: str | None


class StayLinks(Forbidding):
    self: str
    encounter: str = Field(description="The FHIR Encounter of the stay")


class Escalation(Forbidding):
    referral_id: str
    task_id: str | None = Field(description="The Task marked stat (None: no open Task)")
    reason: str


class BookingView(BaseModel):
    """A custody stay as the JMS sees it."""

    model_config = _example(
        {
            "stay_id": _STAY,
            "booking_number": "2026-11-0457",
            "patient_id": _PATIENT,
            "status": "released",
            "facility": "County Jail, Main Facility",
            "booked_at": "2026-11-20T22:15:00-05:00",  # calendar: fixed (Swagger example)
            "expected_release_at": "2030-06-01T08:00:00-05:00",  # calendar: fixed
            "release": {
                "released_at": "2026-11-27T16:40:00-05:00",  # calendar: fixed
                "planned": False,
                "release_type": "court-order",
                "destination": "Home (county)",
            },
            "locations": [
                {
                    "facility": "County Jail, Main Facility",
                    "status": "completed",
                    "from": "2026-11-20T22:15:00-05:00",  # calendar: fixed
                    "to": "2026-11-27T16:40:00-05:00",  # calendar: fixed
                }
            ],
            "referrals": [],
            "links": {
                "self": "http://127.0.0.1:8000/v1/bookings/2026-11-0457",
                "encounter": f"http://127.0.0.1:8000/fhir/Encounter/{_STAY}",
            },
            "escalations": [],
        }
    )
    stay_id: str | None = Field(description="The FHIR Encounter id")
    booking_number: str | None
    patient_id: str
    status: Literal["in-custody", "released", "cancelled"]
    facility: str | None = Field(description="Where the person is (or was last)")
    booked_at: str | None
    expected_release_at: str | None
    release: StayRelease | None = Field(description="The recorded release, once it happened")
    locations: list[StayLocation] = Field(description="Every facility of the stay, in order")
    referrals: list[str] = Field(description="ServiceRequest/<id> the stay's referrals")
    links: StayLinks
    escalations: list[Escalation] | None = Field(
        None, description="Recording a release only: referrals escalated by it"
    )


# --- naloxone ------------------------------------------------------------------------------------


class Product(Forbidding):
    key: str
    rxnorm: str | None
    display: str | None


class KitLinks(Forbidding):
    fhir: str
    prefill: str | None = Field(None, description="The person's overdose-risk prefill")


class NaloxoneRecordView(BaseModel):
    """A naloxone kit handed out: the FHIR records made for it."""

    model_config = _example(
        {
            "record_id": _KIT,
            "kind": "known-person",
            "patient_id": _PATIENT,
            "medication_dispense": f"MedicationDispense/{_KIT}",
            "procedure": "Procedure/01a2465dc2547a38bed2766148492200",
            "related_person": None,
            "supply_delivery": None,
            "product": {
                "key": "naloxone-4mg-nasal",
                "rxnorm": "1725059",
                "display": "naloxone hydrochloride 40 MG/ML Nasal Spray",
            },
            "quantity": 2,
            "given_at": "2026-11-26T08:10:00-05:00",  # calendar: fixed (Swagger example)
            "links": {
                "fhir": f"http://127.0.0.1:8000/fhir/MedicationDispense/{_KIT}",
                "prefill": f"http://127.0.0.1:8000/v1/people/{_PATIENT}/prefill/overdose-risk",
            },
        }
    )
    record_id: str
    kind: Literal["known-person", "anonymous"]
    patient_id: str | None
    medication_dispense: str | None
    procedure: str | None = Field(description="The education given (Procedure/<id>)")
    related_person: str | None = Field(description="The family member who took the kit")
    supply_delivery: str | None = Field(description="An anonymous kit's SupplyDelivery")
    product: Product
    quantity: int
    given_at: str
    links: KitLinks


class FhirLink(Forbidding):
    fhir: str


class OverdoseResponseView(BaseModel):
    """A reported overdose response (an Observation)."""

    model_config = _example(
        {
            "record_id": "01a2465dc2bc75a48b9d03f98ee0c9bc",
            "observation": "Observation/01a2465dc2bc75a48b9d03f98ee0c9bc",
            "patient_id": None,
            "outcome": "survived",
            "naloxone_doses": 2,
            "occurred_at": "2026-11-25T23:40:00-05:00",  # calendar: fixed (Swagger example)
            "links": {
                "fhir": "http://127.0.0.1:8000/fhir/Observation/01a2465dc2bc75a48b9d03f98ee0c9bc"
            },
        }
    )
    record_id: str
    observation: str
    patient_id: str | None
    outcome: str
    naloxone_doses: int | None
    occurred_at: str
    links: FhirLink


class Figures(Forbidding):
    kits_total: int
    kits_to_known_people: int
    kits_to_family_members: int
    kits_anonymous: int
    people_given_kits: int
    people_trained: int
    anonymous_education: int
    releases: int
    releases_with_kit: int
    overdose_responses_reported: int
    reversals_reported: int
    deaths_reported: int


class FiguresGroup(Figures):
    group: str = Field(description="A month (YYYY-MM), facility reference or intercept")
    label: str = Field(description="Its name (e.g. the facility's)")


_FIGURES = {
    "kits_total": 2,
    "kits_to_known_people": 2,
    "kits_to_family_members": 0,
    "kits_anonymous": 0,
    "people_given_kits": 1,
    "people_trained": 1,
    "anonymous_education": 0,
    "releases": 1,
    "releases_with_kit": 1,
    "overdose_responses_reported": 1,
    "reversals_reported": 1,
    "deaths_reported": 0,
}


class NaloxoneSummary(BaseModel):
    """The figures over a period, optionally grouped."""

    model_config = _example(
        {
            "from": "2026-11-01",  # calendar: fixed (Swagger example)
            "to": "2026-11-30",
            "facility": None,
            "group_by": "month",
            "totals": _FIGURES,
            "groups": [{"group": "2026-11", "label": "2026-11", **_FIGURES}],
        }
    )
    from_: str | None = Field(alias="from", description="First day counted (as asked)")
    to: str | None = Field(description="Last day counted (as asked)")
    facility: str | None
    group_by: Literal["month", "facility", "intercept"] | None
    totals: Figures
    groups: list[FiguresGroup] = Field(description="One per group (empty without group_by)")


class ReleaseWindow(Forbidding):
    referrals: list[str] = Field(description="The referrals (ServiceRequest ids) of the window")
    from_: str = Field(alias="from")
    to: str


class Suggestion(Forbidding):
    answer: Scalar
    source: str = Field(description="The record the answer comes from")
    handed_over_at: str
    reason: str


class OverdoseRiskPrefill(BaseModel):
    """Answers the overdose-risk checklist can start from, with where each comes from."""

    model_config = _example(
        {
            "instrument": "overdose-risk",
            "patient_id": _PATIENT,
            "release_windows": [
                {
                    "referrals": ["5b0e6a0c9d2f4e7a8c1b3d5f7a9c0e2b"],
                    "from": "2030-05-31T13:00:00Z",  # calendar: fixed (Swagger example)
                    "to": "2030-06-02T13:00:00Z",  # calendar: fixed (Swagger example)
                }
            ],
            "answers": {"naloxone-in-hand": True},
            "suggestions": {
                "naloxone-in-hand": {
                    "answer": True,
                    "source": f"MedicationDispense/{_KIT}",
                    "handed_over_at": "2030-06-01T12:10:00Z",  # calendar: fixed
                    "reason": "A naloxone kit was handed to the person in the release window",
                }
            },
        }
    )
    instrument: str
    patient_id: str
    release_windows: list[ReleaseWindow]
    answers: dict[str, Scalar] = Field(description="link_id → suggested answer")
    suggestions: dict[str, Suggestion] = Field(description="link_id → why it is suggested")


# --- disclosures ---------------------------------------------------------------------------------


class Disclosure(Forbidding):
    disclosed_at: str | None
    recipient: str | None = Field(description="Organization/<id> the record was shown to")
    client_id: str | None
    record: str | None = Field(description="The resource shown")
    basis: str | None = Field(description="consent, emergency, or why a redacted view was shown")
    consent: str | None
    exception: str | None
    purpose: str | None
    audit_event: str


class DisclosuresPage(BaseModel):
    """Who was shown a person's Part 2 records, and on what basis (42 CFR 2.24)."""

    model_config = _example(
        {
            "disclosures": [
                {
                    "disclosed_at": "2026-11-27T10:05:00Z",  # calendar: fixed (Swagger example)
                    "recipient": "Organization/demo-otp",
                    "client_id": "demo-otp",
                    "record": "QuestionnaireResponse/01a2465dc0357f17a050bf2ebe92af38",
                    "basis": "consent",
                    "consent": "Consent/7a6b5c4d3e2f10a9b8c7d6e5f4a3b2c1",
                    "exception": None,
                    "purpose": "TREAT",
                    "audit_event": "AuditEvent/01a2465dc9f07a1b8c2d3e4f5a6b7c8d",
                }
            ],
            "order": "newest",
            "next": None,
        }
    )
    disclosures: list[Disclosure]
    order: Literal["newest", "oldest"]
    next: str | None = Field(description="The next page's URL, if any")


# --- identity domains ----------------------------------------------------------------------------


class IdentityDomain(BaseModel):
    """Organizations whose person identifiers name the same people."""

    model_config = _example(
        {
            "domain": "county",
            "organizations": ["Organization/demo-county-jail", "Organization/demo-jail-health"],
        }
    )
    domain: str
    organizations: list[str]
