"""Overdose education and naloxone distribution (OEND) records from a JMS or program.

One ``POST /v1/naloxone`` becomes, in one transaction:

* a kit to a known person: a MedicationDispense (RxNorm product, quantity in kits,
  ``whenHandedOver``, the staff member as performer, subject = the Patient; the receiver is the
  Patient, or a family member as a RelatedPerson in the R5 cross-version receiver extension,
  since R4 ``receiver`` cannot reference a RelatedPerson) and, when education was given, a
  Procedure (SNOMED 460831000124102 plus our ``oend`` code) that the dispense is ``partOf``;
* an anonymous kit: one SupplyDelivery with the product, quantity, date, place and the
  distributing organization, and nothing about the recipient (no Patient, no name, no birth
  date; a flag says whether education was given).

``POST /v1/overdose-responses`` becomes one Observation (code ``oend#overdose-response``, the
outcome as its value, doses/roles/place/product as components), about a person or nobody.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ForbiddenError, Issue
from service.features.naloxone.facts import Medications, instant, kit_parts
from service.features.people import Person, match_or_create_patient
from service.fhir import oend_codes as oend
from service.fhir.codes import ADMINISTERED_AT_EXTENSION, intercept_extension, staff_reference
from service.storage import repository as repo
from service.telemetry import traced_workflow
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet, WriteEvent

FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew between the JMS and us
MAX_DOSES = 20  # naloxone doses in one response; more is a typing error


@dataclass
class Staff:
    name: str
    role: str
    staff_id: str | None


@dataclass
class FamilyMember:
    relationship: str  # a key of oend_codes.RELATIONSHIPS
    family_name: str | None = None
    given_names: list[str] = field(default_factory=list)
    phone: str | None = None


@dataclass
class NaloxoneInput:
    person: Person | None  # None: an anonymous kit
    setting: str
    facility: str | None  # Location/<id> or Organization/<id>
    place: str | None
    given_by: Staff | None
    given_at: datetime
    product: str
    quantity: int
    education_given: bool
    family_member: FamilyMember | None
    intercept: int


@dataclass
class OverdoseResponseInput:
    person: Person | None
    occurred_at: datetime
    facility: str | None
    place: str | None
    doses: int
    product: str | None
    outcome: str
    responder_role: str
    reporter_role: str
    recorded_by: Staff | None
    intercept: int | None


# --- validation: every problem at once -----------------------------------------------------


def _when_issues(value: datetime, name: str) -> list[Issue]:
    if value > datetime.now(UTC) + FUTURE_TOLERANCE:
        return [Issue("error", "value", f"{name}: {value.isoformat()} is in the future", (name,))]
    return []


def _product_issues(key: str | None, name: str) -> list[Issue]:
    if key is None or key in oend.PRODUCTS:
        return []
    return [
        Issue(
            "error",
            "code-invalid",
            f"{name}: unknown product '{key}'; use one of {', '.join(oend.PRODUCTS)}",
            (name,),
        )
    ]


def _count_issues(value: int, name: str, *, maximum: int, what: str) -> list[Issue]:
    if value <= 0:
        return [Issue("error", "value", f"{name}: must be at least 1, not {value}", (name,))]
    if value > maximum:
        return [
            Issue(
                "error",
                "value",
                f"{name}: {value} {what} in one record is more than the maximum of {maximum}; "
                "record large distributions in several records or check the number",
                (name,),
            )
        ]
    return []


async def _facility_issues(conn: AsyncConnection, facility: str | None) -> list[Issue]:
    if facility is None:
        return []
    rtype, _, rid = facility.partition("/")
    if rtype in ("Location", "Organization") and await repo.resource_exists(conn, rtype, rid):
        return []
    return [
        Issue(
            "error",
            "not-found",
            f"facility: {facility} is not known here (GET /fhir/Location or /fhir/Organization)",
            ("facility",),
        )
    ]


def _raise(issues: list[Issue]) -> None:
    if issues:
        raise BusinessRuleError(
            f"{len(issues)} problem(s) in the request; the first: {issues[0].diagnostics}",
            issues=issues,
        )


async def check_naloxone(conn: AsyncConnection, ctx: WorkflowContext, data: NaloxoneInput) -> None:
    _raise(
        _product_issues(data.product, "product")
        + _count_issues(
            data.quantity,
            "quantity",
            maximum=ctx.settings.naloxone_max_quantity,
            what="kits",
        )
        + _when_issues(data.given_at, "given_at")
        + await _facility_issues(conn, data.facility)
    )


async def check_overdose_response(conn: AsyncConnection, data: OverdoseResponseInput) -> None:
    _raise(
        _product_issues(data.product, "naloxone_product")
        + _count_issues(data.doses, "naloxone_doses", maximum=MAX_DOSES, what="doses")
        + _when_issues(data.occurred_at, "occurred_at")
        + await _facility_issues(conn, data.facility)
    )


# --- FHIR content ------------------------------------------------------------------------------


def _where(
    facility: str | None, place: str | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(Location-typed reference element, extensions): a Location goes in the resource's own
    location element, an Organization in the administered-at extension."""
    element: dict[str, Any] = {}
    extensions: list[dict[str, Any]] = []
    if facility and facility.startswith("Location/"):
        element["reference"] = facility
    elif facility:
        extensions.append(
            {"url": ADMINISTERED_AT_EXTENSION, "valueReference": {"reference": facility}}
        )
    if place:
        element["display"] = place
    return element or None, extensions


def _related_person_body(patient_id: str, member: FamilyMember) -> dict[str, Any]:
    code, display = oend.RELATIONSHIPS[member.relationship]
    body: dict[str, Any] = {
        "resourceType": "RelatedPerson",
        "active": True,
        "patient": {"reference": f"Patient/{patient_id}"},
        "relationship": [
            {"coding": [{"system": oend.V3_ROLE_CODE, "code": code, "display": display}]}
        ],
    }
    if member.family_name or member.given_names:
        name: dict[str, Any] = {}
        if member.family_name:
            name["family"] = member.family_name
        if member.given_names:
            name["given"] = member.given_names
        body["name"] = [name]
    if member.phone:
        body["telecom"] = [{"system": "phone", "value": member.phone}]
    return body


def _same_name(body: dict[str, Any], member: FamilyMember) -> bool:
    names = body.get("name") or [{}]
    name = names[0] if isinstance(names[0], dict) else {}
    return name.get("family") == member.family_name and list(name.get("given") or []) == list(
        member.given_names
    )


async def _related_person(
    conn: AsyncConnection, ctx: WorkflowContext, patient_id: str, member: FamilyMember
) -> str:
    """The family member as a RelatedPerson of the patient: found by relationship and name, or
    created (so repeated kits to the same mother are one RelatedPerson)."""
    await repo.lock_key(conn, f"related-person:Patient/{patient_id}")
    code, _ = oend.RELATIONSHIPS[member.relationship]
    request = wf.parse_search_params(
        ctx,
        "RelatedPerson",
        [("patient", f"Patient/{patient_id}"), ("relationship", f"{oend.V3_ROLE_CODE}|{code}")],
        strict=True,
    )
    for match in (await wf.search_in(conn, ctx, request)).matches:
        if match.raw and _same_name(orjson.loads(match.raw), member):
            return match.id
    created = await wf.create_in(conn, ctx, _related_person_body(patient_id, member))
    return created.stored.id


def _common_extensions(
    data: NaloxoneInput, where_ext: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    return [intercept_extension(data.intercept), oend.setting_extension(data.setting), *where_ext]


def education_procedure(
    data: NaloxoneInput, *, subject: dict[str, Any], staff: dict[str, Any], related: str | None
) -> dict[str, Any]:
    location, where_ext = _where(data.facility, data.place)
    extensions = _common_extensions(data, where_ext)
    if related:
        extensions.append(
            {"url": oend.FOCUS_R5_EXTENSION, "valueReference": {"reference": related}}
        )
    procedure: dict[str, Any] = {
        "resourceType": "Procedure",
        "extension": extensions,
        "status": "completed",
        "category": {"coding": [oend.EDUCATION_CATEGORY]},
        "code": {
            "coding": [oend.SNOMED_OPIOID_SAFETY, oend.oend_coding("oend")],
            "text": oend.OEND_CONCEPTS["oend"],
        },
        "subject": subject,
        "performedDateTime": data.given_at.isoformat(),
        "performer": [{"actor": staff}],
    }
    if location:
        procedure["location"] = location
    return procedure


def medication_dispense(
    data: NaloxoneInput,
    *,
    subject: dict[str, Any],
    staff: dict[str, Any],
    related: str | None,
    procedure: str | None,
) -> dict[str, Any]:
    location, where_ext = _where(data.facility, data.place)
    extensions = _common_extensions(data, where_ext)
    if related:
        extensions.append(
            {"url": oend.RECEIVER_R5_EXTENSION, "valueReference": {"reference": related}}
        )
    dispense: dict[str, Any] = {"resourceType": "MedicationDispense", "extension": extensions}
    if procedure:
        dispense["partOf"] = [{"reference": procedure}]
    dispense.update(
        {
            "status": "completed",
            "medicationCodeableConcept": oend.product_concept(data.product),
            "subject": subject,
            "performer": [{"actor": staff}],
            "quantity": {"value": data.quantity, **oend.KIT_UNIT},
            "whenHandedOver": data.given_at.isoformat(),
        }
    )
    if location:
        dispense["location"] = location
    if not related:
        dispense["receiver"] = [subject]
    return dispense


def anonymous_supply_delivery(data: NaloxoneInput, *, organization: str) -> dict[str, Any]:
    """Nothing about the recipient, nor the staff member's name: only what, how many, when,
    where and which organization."""
    destination, where_ext = _where(data.facility, data.place)
    extensions = _common_extensions(data, where_ext)
    extensions.append({"url": oend.EDUCATION_EXTENSION, "valueBoolean": data.education_given})
    delivery: dict[str, Any] = {
        "resourceType": "SupplyDelivery",
        "extension": extensions,
        "status": "completed",
        "type": {
            "coding": [
                {"system": oend.SUPPLY_ITEM_TYPE, "code": "medication", "display": "Medication"}
            ]
        },
        "suppliedItem": {
            "quantity": {"value": data.quantity, **oend.KIT_UNIT},
            "itemCodeableConcept": oend.product_concept(data.product),
        },
        "occurrenceDateTime": data.given_at.isoformat(),
        "supplier": {"reference": organization},
    }
    if destination:
        delivery["destination"] = destination
    return delivery


def _role(system_code: str) -> dict[str, Any]:
    display = oend.RESPONDER_ROLES[system_code]
    return {
        "coding": [{"system": oend.ROLE_SYSTEM, "code": system_code, "display": display}],
        "text": display,
    }


def overdose_observation(
    data: OverdoseResponseInput, *, subject: str | None, performer: dict[str, Any]
) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = []
    if data.intercept is not None:
        extensions.append(intercept_extension(data.intercept))
    if data.facility:
        extensions.append(
            {"url": ADMINISTERED_AT_EXTENSION, "valueReference": {"reference": data.facility}}
        )
    outcome = oend.OUTCOMES[data.outcome]
    components: list[dict[str, Any]] = [
        {"code": {"coding": [oend.oend_coding("naloxone-doses")]}, "valueInteger": data.doses},
        {
            "code": {"coding": [oend.oend_coding("responder-role")]},
            "valueCodeableConcept": _role(data.responder_role),
        },
        {
            "code": {"coding": [oend.oend_coding("reporter-role")]},
            "valueCodeableConcept": _role(data.reporter_role),
        },
    ]
    if data.product:
        components.append(
            {
                "code": {"coding": [oend.oend_coding("naloxone-product")]},
                "valueCodeableConcept": oend.product_concept(data.product),
            }
        )
    if data.place:
        components.append(
            {"code": {"coding": [oend.oend_coding("place")]}, "valueString": data.place}
        )
    observation: dict[str, Any] = {"resourceType": "Observation"}
    if extensions:
        observation["extension"] = extensions
    observation.update(
        {
            "status": "final",
            "code": {"coding": [oend.OVERDOSE_RESPONSE], "text": oend.OVERDOSE_RESPONSE["display"]},
        }
    )
    if subject:
        observation["subject"] = {"reference": subject}
    observation.update(
        {
            "effectiveDateTime": data.occurred_at.isoformat(),
            "performer": [performer],
            "valueCodeableConcept": {
                "coding": [
                    {"system": oend.OUTCOME_SYSTEM, "code": data.outcome, "display": outcome}
                ],
                "text": outcome,
            },
            "component": components,
        }
    )
    return observation


# --- use cases ---------------------------------------------------------------------------------


def _organization(ctx: WorkflowContext) -> str:
    if ctx.organization is None:
        raise ForbiddenError("Only a client acting for an organization can record naloxone")
    return ctx.organization


def _product_view(key: str) -> dict[str, Any]:
    product = oend.PRODUCTS[key]
    return {"key": key, "rxnorm": product.rxnorm, "display": product.display}


async def _record_dispense(
    conn: AsyncConnection, ctx: WorkflowContext, data: NaloxoneInput, organization: str
) -> dict[str, Any]:
    assert data.person is not None and data.given_by is not None
    patient_id, _ = await match_or_create_patient(conn, ctx, data.person)
    subject = {"reference": f"Patient/{patient_id}"}
    related = None
    if data.family_member is not None:
        related = (
            f"RelatedPerson/{await _related_person(conn, ctx, patient_id, data.family_member)}"
        )
    staff = staff_reference(
        organization=organization,
        staff_id=data.given_by.staff_id,
        name=data.given_by.name,
        role=data.given_by.role,
    )
    procedure = None
    if data.education_given:
        created = await wf.create_in(
            conn, ctx, education_procedure(data, subject=subject, staff=staff, related=related)
        )
        procedure = f"Procedure/{created.stored.id}"
    dispense = await wf.create_in(
        conn,
        ctx,
        medication_dispense(
            data, subject=subject, staff=staff, related=related, procedure=procedure
        ),
    )
    dispense_id = dispense.stored.id
    return {
        "record_id": dispense_id,
        "kind": "known-person",
        "patient_id": patient_id,
        "medication_dispense": f"MedicationDispense/{dispense_id}",
        "procedure": procedure,
        "related_person": related,
        "supply_delivery": None,
        "product": _product_view(data.product),
        "quantity": data.quantity,
        "given_at": data.given_at.isoformat(),
        "links": {
            "fhir": f"{ctx.base_url}/MedicationDispense/{dispense_id}",
            "prefill": f"{ctx.base_url.removesuffix('/fhir')}/v1/people/{patient_id}"
            "/prefill/overdose-risk",
        },
    }


async def _record_anonymous(
    conn: AsyncConnection, ctx: WorkflowContext, data: NaloxoneInput, organization: str
) -> dict[str, Any]:
    created = await wf.create_in(
        conn, ctx, anonymous_supply_delivery(data, organization=organization)
    )
    sid = created.stored.id
    return {
        "record_id": sid,
        "kind": "anonymous",
        "patient_id": None,
        "medication_dispense": None,
        "procedure": None,
        "related_person": None,
        "supply_delivery": f"SupplyDelivery/{sid}",
        "product": _product_view(data.product),
        "quantity": data.quantity,
        "given_at": data.given_at.isoformat(),
        "links": {"fhir": f"{ctx.base_url}/SupplyDelivery/{sid}"},
    }


@traced_workflow(
    "workflow.record_naloxone", resource_type="MedicationDispense", interaction="create"
)
async def record_naloxone(
    ctx: WorkflowContext, data: NaloxoneInput, *, idempotency_key: str | None, fingerprint: str
) -> tuple[int, dict[str, Any]]:
    assert ctx.principal is not None
    organization = _organization(ctx)

    async def create(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        await check_naloxone(conn, ctx, data)
        if data.person is None:
            body = await _record_anonymous(conn, ctx, data, organization)
        else:
            body = await _record_dispense(conn, ctx, data, organization)
        return 201, body

    return await idempotency.run_once(
        ctx, key=idempotency_key, fingerprint=fingerprint, work=create
    )


@traced_workflow(
    "workflow.record_overdose_response", resource_type="Procedure", interaction="create"
)
async def record_overdose_response(
    ctx: WorkflowContext,
    data: OverdoseResponseInput,
    *,
    idempotency_key: str | None,
    fingerprint: str,
) -> tuple[int, dict[str, Any]]:
    assert ctx.principal is not None
    organization = _organization(ctx)

    async def create(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        await check_overdose_response(conn, data)
        patient_id = None
        if data.person is not None:
            patient_id, _ = await match_or_create_patient(conn, ctx, data.person)
        performer = (
            staff_reference(
                organization=organization,
                staff_id=data.recorded_by.staff_id,
                name=data.recorded_by.name,
                role=data.recorded_by.role,
            )
            if data.recorded_by
            else {"reference": organization}
        )
        observation = overdose_observation(
            data, subject=f"Patient/{patient_id}" if patient_id else None, performer=performer
        )
        created = await wf.create_in(conn, ctx, observation)
        oid = created.stored.id
        body = {
            "record_id": oid,
            "observation": f"Observation/{oid}",
            "patient_id": patient_id,
            "outcome": data.outcome,
            "naloxone_doses": data.doses,
            "occurred_at": data.occurred_at.isoformat(),
            "links": {"fhir": f"{ctx.base_url}/Observation/{oid}"},
        }
        return 201, body

    return await idempotency.run_once(
        ctx, key=idempotency_key, fingerprint=fingerprint, work=create
    )


# --- the same limits on records written through FHIR -------------------------------------------
# Programs may POST MedicationDispense, SupplyDelivery and Observation resources themselves, and
# the OEND summary counts them like /v1 records: a kit count or a date that /v1 refuses must
# not reach the measures through the other door.


def _whole_count(value: Any, path: str, *, maximum: int, what: str) -> list[Issue]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return []  # structure (a number) is the validator's; absent means one
    if value != int(value):
        return [
            Issue("error", "value", f"{path}: {value} is not a whole number of {what}", (path,))
        ]
    return _count_issues(int(value), path, maximum=maximum, what=what)


def _future_issues(value: Any, path: str) -> list[Issue]:
    at = instant(value)
    return _when_issues(at, path) if at is not None else []


async def _check_kit_record(event: WriteEvent) -> None:
    if event.body is None:
        return
    kit = kit_parts(event.body)
    if not await Medications(event.conn).is_naloxone(kit):
        return
    quantity = (kit.quantity or {}).get("value")
    maximum = event.ctx.settings.naloxone_max_quantity
    _raise(
        _whole_count(quantity, kit.quantity_path, maximum=maximum, what="kits")
        + _future_issues(kit.when, kit.when_path)
    )


async def _check_overdose_response(event: WriteEvent) -> None:
    body = event.body
    if body is None or not oend.is_oend(body.get("code"), "overdose-response"):
        return
    issues = _future_issues(body.get("effectiveDateTime"), "Observation.effectiveDateTime")
    for component in body.get("component") or []:
        if oend.is_oend(component.get("code"), "naloxone-doses"):
            issues += _whole_count(
                component.get("valueInteger"),
                "Observation.component(naloxone-doses).valueInteger",
                maximum=MAX_DOSES,
                what="doses",
            )
    _raise(issues)


def register(rules: RuleSet) -> None:
    rules.on_write("MedicationDispense", _check_kit_record)
    rules.on_write("SupplyDelivery", _check_kit_record)
    rules.on_write("Observation", _check_overdose_response)
