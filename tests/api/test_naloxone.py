"""Overdose education and naloxone distribution: /v1 records, FHIR records, the summary and
the pre-filled checklist factor."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.builders import FHIR_JSON, jms_person, jms_referral, organization

pytestmark = pytest.mark.usefixtures("instruments")

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
OEND = "https://handoff.dev/fhir/CodeSystem/oend"
SIM = "https://handoff.dev/fhir/StructureDefinition/sim-intercept"
FACILITY = "https://handoff.dev/fhir/StructureDefinition/referring-facility"
R5_RECEIVER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-MedicationDispense.receiver"
R5_FOCUS = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Procedure.focus"


def person(pid: str, family: str = "Rivera") -> dict[str, Any]:
    return jms_person(pid, family=family)


def kit(pid: str | None = "P-1", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "setting": "at-release",
        "given_by": {"id": "S-1", "name": "Jordan Lee", "role": "nurse"},
        "given_at": "2026-10-05T08:00:00-04:00",
        "product": "naloxone-4mg-nasal",
        "quantity": 2,
        "education_given": True,
        "intercept": 4,
    }
    if pid is None:
        body["anonymous"] = True
    else:
        body["person"] = person(pid)
    body.update(over)
    return body


def response(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "occurred_at": "2026-10-10T23:40:00-04:00",
        "place": "Riverside park",
        "naloxone_doses": 2,
        "naloxone_product": "naloxone-4mg-nasal",
        "outcome": "survived",
        "administered_by": "peer",
        "reported_by": "outreach-worker",
        "intercept": 0,
    }
    body.update(over)
    return body


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).replace(microsecond=0).isoformat()


async def fhir_post(c: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await c.post(f"/fhir/{body['resourceType']}", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def total(c: httpx.AsyncClient, path: str) -> int:
    bundle = (await c.get(path, params={"_total": "accurate", "_count": "0"})).json()
    return int(bundle["total"])


@pytest.fixture
async def net(client: httpx.AsyncClient, org_client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    ids: dict[str, str] = {}
    for key in ("jail", "otp", "hr"):
        org = await fhir_post(client, organization(key, key))
        ids[key] = f"Organization/{org['id']}"
    for key, name in (("desk", "Release desk"), ("annex", "Annex")):
        loc = await fhir_post(
            client,
            {
                "resourceType": "Location",
                "name": name,
                "managingOrganization": {"reference": ids["jail"]},
            },
        )
        ids[key] = f"Location/{loc['id']}"
    return {
        "ids": ids,
        "admin": client,
        "jail": await org_client(ids["jail"]),
        "otp": await org_client(ids["otp"]),
        "hr": await org_client(ids["hr"]),
    }


# --- records through /v1 -------------------------------------------------------------------


async def test_kit_to_known_person(net: dict[str, Any]) -> None:
    jail, admin, ids = net["jail"], net["admin"], net["ids"]
    r = await jail.post("/v1/naloxone", json=kit(facility=ids["desk"]))
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["kind"] == "known-person" and out["quantity"] == 2
    assert out["product"]["rxnorm"] == "1725059"
    md = (await admin.get(f"/fhir/{out['medication_dispense']}")).json()
    assert md["status"] == "completed"
    assert md["medicationCodeableConcept"]["coding"][0] == {
        "system": RXNORM,
        "code": "1725059",
        "display": "naloxone hydrochloride 40 MG/ML Nasal Spray",
    }
    assert md["quantity"]["value"] == 2 and md["quantity"]["code"] == "{kit}"
    assert md["whenHandedOver"] == "2026-10-05T08:00:00-04:00"
    assert md["subject"] == {"reference": f"Patient/{out['patient_id']}"}
    assert md["receiver"] == [md["subject"]]
    assert md["location"] == {"reference": ids["desk"]}
    staff = md["performer"][0]["actor"]
    assert staff["identifier"]["value"] == "S-1" and "Jordan Lee" in staff["display"]
    assert md["partOf"] == [{"reference": out["procedure"]}]
    assert md["extension"][0]["url"] == SIM and md["extension"][0]["valueCoding"]["code"] == "4"
    proc = (await admin.get(f"/fhir/{out['procedure']}")).json()
    codes = {(c["system"], c["code"]) for c in proc["code"]["coding"]}
    assert codes == {(SNOMED, "460831000124102"), (OEND, "oend")}
    assert proc["subject"] == md["subject"] and proc["status"] == "completed"
    # Without education: no Procedure, and the same person is matched, not duplicated.
    again = (
        await jail.post(
            "/v1/naloxone", json=kit(education_given=False, given_at="2026-10-06T08:00:00-04:00")
        )
    ).json()
    assert again["procedure"] is None and again["patient_id"] == out["patient_id"]
    assert "partOf" not in (await admin.get(f"/fhir/{again['medication_dispense']}")).json()
    assert await total(admin, "/fhir/Procedure") == 1


async def test_kit_to_family_member(net: dict[str, Any]) -> None:
    jail, admin = net["jail"], net["admin"]
    body = kit(
        received_by="family-member",
        family_member={"relationship": "mother", "family_name": "Rivera", "given_names": ["Ana"]},
    )
    out = (await jail.post("/v1/naloxone", json=body)).json()
    related = out["related_person"]
    assert related.startswith("RelatedPerson/")
    rp = (await admin.get(f"/fhir/{related}")).json()
    assert rp["patient"] == {"reference": f"Patient/{out['patient_id']}"}
    assert rp["relationship"][0]["coding"][0]["code"] == "MTH"
    assert rp["name"] == [{"family": "Rivera", "given": ["Ana"]}]
    md = (await admin.get(f"/fhir/{out['medication_dispense']}")).json()
    assert "receiver" not in md  # R4 receiver cannot name a RelatedPerson
    assert {"url": R5_RECEIVER, "valueReference": {"reference": related}} in md["extension"]
    proc = (await admin.get(f"/fhir/{out['procedure']}")).json()
    assert {"url": R5_FOCUS, "valueReference": {"reference": related}} in proc["extension"]
    # The same mother again is the same RelatedPerson; another relative is a new one.
    body["given_at"] = "2026-10-07T08:00:00-04:00"
    assert (await jail.post("/v1/naloxone", json=body)).json()["related_person"] == related
    body["family_member"] = {"relationship": "sibling", "given_names": ["Leo"]}
    body["given_at"] = "2026-10-08T08:00:00-04:00"
    assert (await jail.post("/v1/naloxone", json=body)).json()["related_person"] != related
    assert await total(admin, "/fhir/RelatedPerson") == 2


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


async def test_anonymous_kit_stores_no_personal_data(net: dict[str, Any]) -> None:
    jail, admin, ids = net["jail"], net["admin"], net["ids"]
    r = await jail.post(
        "/v1/naloxone",
        json=kit(None, setting="community", place="Mobile van, 5th and Main", quantity=5),
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["kind"] == "anonymous" and out["patient_id"] is None
    assert out["medication_dispense"] is None and out["procedure"] is None
    sd = (await admin.get(f"/fhir/{out['supply_delivery']}")).json()
    assert sd["suppliedItem"]["quantity"]["value"] == 5
    assert sd["suppliedItem"]["itemCodeableConcept"]["coding"][0]["code"] == "1725059"
    assert sd["occurrenceDateTime"] == "2026-10-05T08:00:00-04:00"
    assert sd["supplier"] == {"reference": ids["jail"]}
    assert sd["destination"] == {"display": "Mobile van, 5th and Main"}
    assert not _keys(sd) & {"name", "birthDate", "patient", "receiver", "identifier", "telecom"}
    assert "Jordan" not in json.dumps(sd)  # not even the staff member's name
    assert await total(admin, "/fhir/Patient") == 0
    assert await total(admin, "/fhir/MedicationDispense") == 0
    # Naming a person on an anonymous record, or a family member, is refused.
    both = kit("P-1", anonymous=True)
    assert (await jail.post("/v1/naloxone", json=both)).status_code == 422
    neither = kit(None)
    del neither["anonymous"]
    assert (await jail.post("/v1/naloxone", json=neither)).status_code == 422
    family = kit(None, received_by="family-member", family_member={"relationship": "mother"})
    assert (await jail.post("/v1/naloxone", json=family)).status_code == 422
    assert await total(admin, "/fhir/Patient") == 0


async def test_overdose_response(net: dict[str, Any]) -> None:
    hr, admin, ids = net["hr"], net["admin"], net["ids"]
    r = await hr.post("/v1/overdose-responses", json=response(facility=ids["hr"]))
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["patient_id"] is None
    obs = (await admin.get(f"/fhir/{out['observation']}")).json()
    assert obs["code"]["coding"][0] == {
        "system": OEND,
        "code": "overdose-response",
        "display": "Overdose response with naloxone (reported)",
    }
    assert "subject" not in obs
    assert obs["valueCodeableConcept"]["coding"][0]["code"] == "survived"
    parts = {c["code"]["coding"][0]["code"]: c for c in obs["component"]}
    assert parts["naloxone-doses"]["valueInteger"] == 2
    assert parts["responder-role"]["valueCodeableConcept"]["coding"][0]["code"] == "peer"
    assert parts["reporter-role"]["valueCodeableConcept"]["coding"][0]["code"] == "outreach-worker"
    assert parts["naloxone-product"]["valueCodeableConcept"]["coding"][0]["code"] == "1725059"
    assert parts["place"]["valueString"] == "Riverside park"
    assert obs["performer"] == [{"reference": ids["hr"]}]
    assert await total(admin, "/fhir/Patient") == 0
    # With the person known.
    known = (
        await hr.post(
            "/v1/overdose-responses",
            json=response(
                person=person("P-7"),
                outcome="died",
                recorded_by={"name": "Sam Ortiz", "role": "peer-specialist"},
            ),
        )
    ).json()
    obs = (await admin.get(f"/fhir/{known['observation']}")).json()
    assert obs["subject"] == {"reference": f"Patient/{known['patient_id']}"}
    assert "Sam Ortiz" in obs["performer"][0]["display"]


# --- validation and idempotency ------------------------------------------------------------


async def test_validation_lists_every_problem(net: dict[str, Any], app) -> None:  # type: ignore[no-untyped-def]
    jail, admin = net["jail"], net["admin"]
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    bad = kit(product="naloxone-99mg", quantity=51, given_at=future, facility="Location/nope")
    r = await jail.post("/v1/naloxone", json=bad)
    assert r.status_code == 422
    issues = r.json()["issue"]
    assert {i["expression"][0] for i in issues} == {"product", "quantity", "given_at", "facility"}
    by = {i["expression"][0]: i["diagnostics"] for i in issues}
    assert "naloxone-4mg-nasal" in by["product"]  # tells the caller what is allowed
    assert "50" in by["quantity"]
    assert next(i for i in issues if i["expression"] == ["facility"])["code"] == "not-found"
    for quantity in (0, -3):
        r = await jail.post("/v1/naloxone", json=kit(quantity=quantity))
        assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["quantity"]
    # The maximum is a setting.
    app.state.settings = app.state.settings.model_copy(update={"naloxone_max_quantity": 3})
    r = await jail.post("/v1/naloxone", json=kit(None, quantity=4))
    assert r.status_code == 422 and "3" in r.json()["issue"][0]["diagnostics"]
    assert (await jail.post("/v1/naloxone", json=kit(None, quantity=3))).status_code == 201
    # Structural problems: a time without zone, a missing staff member.
    r = await jail.post("/v1/naloxone", json=kit(given_at="2026-10-05T08:00:00"))
    assert r.status_code == 422
    no_staff = kit()
    del no_staff["given_by"]
    assert (await jail.post("/v1/naloxone", json=no_staff)).status_code == 422
    # Overdose responses are checked the same way.
    r = await jail.post(
        "/v1/overdose-responses",
        json=response(
            naloxone_doses=0, naloxone_product="heroin", occurred_at=future, facility="Location/x"
        ),
    )
    assert r.status_code == 422
    assert {i["expression"][0] for i in r.json()["issue"]} == {
        "naloxone_doses",
        "naloxone_product",
        "occurred_at",
        "facility",
    }
    # Nothing was written by the refused requests.
    assert await total(admin, "/fhir/Patient") == 0
    assert await total(admin, "/fhir/Observation") == 0
    assert await total(admin, "/fhir/SupplyDelivery") == 1


NALOXONE_4MG = {"coding": [{"system": RXNORM, "code": "1725059"}]}
BUPRENORPHINE = {"coding": [{"system": RXNORM, "code": "1010600"}]}


def fhir_dispense(patient: str, quantity: float, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": NALOXONE_4MG,
        "subject": {"reference": patient},
        "quantity": {"value": quantity},
        "whenHandedOver": "2026-10-05T08:00:00-04:00",
    }
    return body | over


def fhir_delivery(quantity: float, when: str = "2026-10-05T08:00:00-04:00") -> dict[str, Any]:
    return {
        "resourceType": "SupplyDelivery",
        "status": "completed",
        "suppliedItem": {"itemCodeableConcept": NALOXONE_4MG, "quantity": {"value": quantity}},
        "occurrenceDateTime": when,
    }


async def test_fhir_kit_records_have_the_v1_limits(net: dict[str, Any], app) -> None:  # type: ignore[no-untyped-def]
    """A program that POSTs its own kit records cannot put into the measures what /v1 refuses:
    51 kits, half a kit, no kit, a kit handed over next week."""
    admin = net["admin"]
    patient = (await fhir_post(admin, {"resourceType": "Patient"}))["id"]
    ref = f"Patient/{patient}"
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    for body, expression in (
        (fhir_dispense(ref, 51), "MedicationDispense.quantity.value"),
        (fhir_dispense(ref, 0), "MedicationDispense.quantity.value"),
        (fhir_dispense(ref, 1.5), "MedicationDispense.quantity.value"),
        (fhir_dispense(ref, 2, whenHandedOver=future), "MedicationDispense.whenHandedOver"),
        (fhir_delivery(500), "SupplyDelivery.suppliedItem.quantity.value"),
        (fhir_delivery(2, future), "SupplyDelivery.occurrence"),
    ):
        r = await admin.post(f"/fhir/{body['resourceType']}", json=body, headers=FHIR_JSON)
        assert r.status_code == 422, (body, r.text)
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == [expression], outcome
    # Within the limits: stored and counted; another medicine is not naloxone's business.
    good = await fhir_post(admin, fhir_dispense(ref, 2.0))
    await fhir_post(admin, fhir_delivery(50))
    await fhir_post(admin, fhir_dispense(ref, 90, medicationCodeableConcept=BUPRENORPHINE))
    assert await total(admin, "/fhir/MedicationDispense") == 2
    assert await total(admin, "/fhir/SupplyDelivery") == 1
    # Updates and transactions go through the same rule.
    good["quantity"] = {"value": 60}
    r = await admin.put(f"/fhir/MedicationDispense/{good['id']}", json=good, headers=FHIR_JSON)
    assert r.status_code == 422
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": fhir_delivery(3), "request": {"method": "POST", "url": "SupplyDelivery"}},
            {"resource": fhir_delivery(99), "request": {"method": "POST", "url": "SupplyDelivery"}},
        ],
    }
    r = await admin.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 422
    assert await total(admin, "/fhir/SupplyDelivery") == 1  # neither entry was written
    # A product named through a Medication resource is recognized too.
    med = await fhir_post(admin, {"resourceType": "Medication", "code": NALOXONE_4MG})
    by_reference = fhir_dispense(ref, 70)
    del by_reference["medicationCodeableConcept"]
    by_reference["medicationReference"] = {"reference": f"Medication/{med['id']}"}
    r = await admin.post("/fhir/MedicationDispense", json=by_reference, headers=FHIR_JSON)
    assert r.status_code == 422
    # The maximum is the same setting as /v1's.
    app.state.settings = app.state.settings.model_copy(update={"naloxone_max_quantity": 100})
    await fhir_post(admin, by_reference)


async def test_fhir_overdose_responses_have_the_v1_limits(net: dict[str, Any]) -> None:
    admin = net["admin"]
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()

    def observation(doses: int, when: str = "2026-10-10T23:40:00-04:00") -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": OEND, "code": "overdose-response"}]},
            "effectiveDateTime": when,
            "valueCodeableConcept": {"coding": [{"system": OEND, "code": "survived"}]},
            "component": [
                {
                    "code": {"coding": [{"system": OEND, "code": "naloxone-doses"}]},
                    "valueInteger": doses,
                }
            ],
        }

    r = await admin.post("/fhir/Observation", json=observation(21), headers=FHIR_JSON)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == [
        "Observation.component(naloxone-doses).valueInteger"
    ]
    r = await admin.post("/fhir/Observation", json=observation(2, future), headers=FHIR_JSON)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Observation.effectiveDateTime"]
    await fhir_post(admin, observation(20))
    other = observation(21)
    other["code"] = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    await fhir_post(admin, other)  # not an overdose response: not this rule's business


async def test_idempotent_retries(net: dict[str, Any]) -> None:
    jail, admin = net["jail"], net["admin"]
    headers = {"Idempotency-Key": "kit-42"}
    results = await asyncio.gather(
        *(jail.post("/v1/naloxone", json=kit(), headers=headers) for _ in range(4))
    )
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["record_id"] for r in results}) == 1
    assert await total(admin, "/fhir/MedicationDispense") == 1
    assert await total(admin, "/fhir/Procedure") == 1
    other = await jail.post("/v1/naloxone", json=kit(quantity=3), headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["issue"][0]["diagnostics"]
    anon = {"Idempotency-Key": "anon-1"}
    first = await jail.post("/v1/naloxone", json=kit(None), headers=anon)
    second = await jail.post("/v1/naloxone", json=kit(None), headers=anon)
    assert first.json() == second.json()
    assert await total(admin, "/fhir/SupplyDelivery") == 1
    rep = {"Idempotency-Key": "od-1"}
    a = await jail.post("/v1/overdose-responses", json=response(), headers=rep)
    b = await jail.post("/v1/overdose-responses", json=response(), headers=rep)
    assert a.status_code == b.status_code == 201 and a.json() == b.json()
    assert await total(admin, "/fhir/Observation") == 1


# --- the summary over a known data set ------------------------------------------------------


def service_request(
    patient: str, start: str, *, requester: str, end: str | None = None, facility: str | None = None
) -> dict[str, Any]:
    period = {"start": start} | ({"end": end} if end else {})
    extension = [
        {
            "url": SIM,
            "valueCoding": {
                "system": "https://handoff.dev/fhir/CodeSystem/sim-intercept",
                "code": "4",
            },
        }
    ]
    if facility:
        extension.append({"url": FACILITY, "valueReference": {"reference": facility}})
    return {
        "resourceType": "ServiceRequest",
        "extension": extension,
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED, "code": "3457005"}]}],
        "code": {"coding": [{"system": SNOMED, "code": "460831000124102"}]},
        "subject": {"reference": patient},
        "occurrencePeriod": period,
        "requester": {"reference": requester},
    }


async def v1(c: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await c.post(path, json=body)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture
async def dataset(net: dict[str, Any]) -> dict[str, Any]:
    """Sept-Oct 2026 at the jail (through /v1 and FHIR), plus noise the summary must ignore."""
    jail, hr, admin, ids = net["jail"], net["hr"], net["admin"], net["ids"]
    desk, annex, jail_org = ids["desk"], ids["annex"], ids["jail"]
    # /v1: kits to known people, anonymous kits, responses.
    a = await v1(jail, "/v1/naloxone", kit("P-1", facility=desk))  # 2 kits, trained
    b = await v1(
        jail,
        "/v1/naloxone",
        kit(
            "P-2",
            facility=annex,
            quantity=1,
            given_at="2026-10-20T09:00:00-04:00",
            received_by="family-member",
            family_member={"relationship": "mother", "given_names": ["Ana"]},
        ),
    )
    await v1(
        jail,
        "/v1/naloxone",
        kit(
            None,
            facility=desk,
            setting="community",
            quantity=5,
            intercept=0,
            given_at="2026-10-07T12:00:00-04:00",
        ),
    )
    await v1(
        jail,
        "/v1/naloxone",
        kit(
            None,
            facility=jail_org,
            quantity=3,
            intercept=3,
            education_given=False,
            given_at="2026-09-15T12:00:00-04:00",
        ),
    )
    await v1(jail, "/v1/overdose-responses", response(facility=desk))
    e2 = await v1(
        jail,
        "/v1/overdose-responses",
        response(
            person=person("P-3"),
            outcome="died",
            occurred_at="2026-09-20T03:00:00-04:00",
            intercept=None,
        ),
    )
    p3 = f"Patient/{e2['patient_id']}"
    # FHIR: a branded dispense, an anonymous delivery through a Medication, education, a response.
    med = await fhir_post(
        admin,
        {"resourceType": "Medication", "code": {"coding": [{"system": RXNORM, "code": "2540703"}]}},
    )
    await fhir_post(
        jail,
        {
            "resourceType": "MedicationDispense",
            "extension": [{"url": SIM, "valueCoding": {"code": "4"}}],
            "status": "completed",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1725064"}]},
            "subject": {"reference": p3},
            "location": {"reference": annex},
            "quantity": {"value": 1},
            "whenHandedOver": "2026-09-21T11:30:00-04:00",
        },
    )
    await fhir_post(
        jail,
        {
            "resourceType": "SupplyDelivery",
            "status": "completed",
            "suppliedItem": {
                "quantity": {"value": 4},
                "itemReference": {"reference": f"Medication/{med['id']}"},
            },
            "occurrenceDateTime": "2026-10-12T10:00:00-04:00",
            "destination": {"reference": desk},
        },
    )
    await fhir_post(
        jail,
        {
            "resourceType": "Procedure",
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": "460831000124102"}]},
            "subject": {"reference": p3},
            "performedDateTime": "2026-09-21T11:00:00-04:00",
            "location": {"reference": annex},
        },
    )
    await fhir_post(
        jail,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": OEND, "code": "overdose-response"}]},
            "effectiveDateTime": "2026-10-11T01:00:00-04:00",
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": "https://handoff.dev/fhir/CodeSystem/overdose-outcome",
                        "code": "transported",
                    }
                ]
            },
        },
    )
    # Noise: not naloxone, not completed, outside the period, another organization's kit.
    noise = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1010600"}]},
        "subject": {"reference": p3},
        "quantity": {"value": 9},
        "whenHandedOver": "2026-10-01T10:00:00-04:00",
    }
    await fhir_post(jail, noise)
    await fhir_post(
        jail,
        noise
        | {
            "status": "cancelled",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1725059"}]},
        },
    )
    await v1(jail, "/v1/naloxone", kit("P-1", given_at="2026-11-02T08:00:00-04:00", facility=desk))
    await v1(hr, "/v1/naloxone", kit(None, quantity=7, given_at="2026-10-03T12:00:00-04:00"))
    # Releases (referrals with release windows), as FHIR ServiceRequests.
    p1, p2 = f"Patient/{a['patient_id']}", f"Patient/{b['patient_id']}"
    p4 = f"Patient/{(await fhir_post(jail, {'resourceType': 'Patient', 'gender': 'male'}))['id']}"
    for sr in (
        # P-1: two referrals for one release; kit at 08:00, release 09:00 -> with kit.
        service_request(p1, "2026-10-05T09:00:00-04:00", requester=jail_org, facility=desk),
        service_request(p1, "2026-10-05T09:30:00-04:00", requester=jail_org, facility=desk),
        # P-2: only the mother took a kit -> without.
        service_request(p2, "2026-10-20T10:00:00-04:00", requester=jail_org, facility=annex),
        # P-4: no kit at all.
        service_request(p4, "2026-10-25T10:00:00-04:00", end="2026-10-26", requester=jail_org),
        # P-3: kit 30 minutes before the expected release -> with kit.
        service_request(p3, "2026-09-21T12:00:00-04:00", requester=jail_org, facility=annex),
    ):
        await fhir_post(jail, sr)
    return {"p1": p1, "p2": p2, "p3": p3, "p4": p4}


PERIOD = {"from": "2026-09-01", "to": "2026-10-31"}
TOTALS = {
    "kits_total": 16,
    "kits_to_known_people": 4,
    "kits_to_family_members": 1,
    "kits_anonymous": 12,
    "people_given_kits": 3,
    "people_trained": 3,
    "anonymous_education": 1,
    "releases": 4,
    "releases_with_kit": 2,
    "overdose_responses_reported": 3,
    "reversals_reported": 2,
    "deaths_reported": 1,
}
ZERO = dict.fromkeys(TOTALS, 0)


async def test_summary_totals_and_tenancy(net: dict[str, Any], dataset: dict[str, Any]) -> None:
    jail, hr, admin = net["jail"], net["hr"], net["admin"]
    r = await jail.get("/v1/naloxone/summary", params=PERIOD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["totals"] == TOTALS
    assert body["groups"] == [] and body["from"] == "2026-09-01"
    # Another organization counts its own kit only; an administrator counts everything.
    assert (await hr.get("/v1/naloxone/summary", params=PERIOD)).json()["totals"] == ZERO | {
        "kits_total": 7,
        "kits_anonymous": 7,
        "anonymous_education": 1,
    }
    everything = (await admin.get("/v1/naloxone/summary", params=PERIOD)).json()["totals"]
    assert everything == TOTALS | {"kits_total": 23, "kits_anonymous": 19, "anonymous_education": 2}
    # Without a period the November kit counts too.
    assert (await jail.get("/v1/naloxone/summary")).json()["totals"]["kits_to_known_people"] == 6


async def test_summary_by_month(net: dict[str, Any], dataset: dict[str, Any]) -> None:
    body = (
        await net["jail"].get("/v1/naloxone/summary", params=PERIOD | {"group_by": "month"})
    ).json()
    groups = {g["group"]: g for g in body["groups"]}
    assert list(groups) == ["2026-09", "2026-10"]
    assert groups["2026-09"] == {"group": "2026-09", "label": "2026-09"} | ZERO | {
        "kits_total": 4,
        "kits_to_known_people": 1,
        "kits_anonymous": 3,
        "people_given_kits": 1,
        "people_trained": 1,
        "releases": 1,
        "releases_with_kit": 1,
        "overdose_responses_reported": 1,
        "deaths_reported": 1,
    }
    assert groups["2026-10"] == {"group": "2026-10", "label": "2026-10"} | {
        "kits_total": 12,
        "kits_to_known_people": 3,
        "kits_to_family_members": 1,
        "kits_anonymous": 9,
        "people_given_kits": 2,
        "people_trained": 2,
        "anonymous_education": 1,
        "releases": 3,
        "releases_with_kit": 1,
        "overdose_responses_reported": 2,
        "reversals_reported": 2,
        "deaths_reported": 0,
    }
    assert body["totals"] == TOTALS


async def test_summary_by_facility_and_filter(net: dict[str, Any], dataset: dict[str, Any]) -> None:
    jail, ids = net["jail"], net["ids"]
    body = (await jail.get("/v1/naloxone/summary", params=PERIOD | {"group_by": "facility"})).json()
    groups = {g["group"]: g for g in body["groups"]}
    assert set(groups) == {ids["desk"], ids["annex"], ids["jail"], "none"}
    assert groups[ids["desk"]]["label"] == "Release desk"
    assert groups[ids["desk"]] | {"group": "", "label": ""} == {"group": "", "label": ""} | ZERO | {
        "kits_total": 11,
        "kits_to_known_people": 2,
        "kits_anonymous": 9,
        "people_given_kits": 1,
        "people_trained": 1,
        "anonymous_education": 1,
        "releases": 1,
        "releases_with_kit": 1,
        "overdose_responses_reported": 1,
        "reversals_reported": 1,
    }
    annex = groups[ids["annex"]]
    assert (annex["kits_to_known_people"], annex["kits_to_family_members"]) == (2, 1)
    assert (annex["people_given_kits"], annex["people_trained"]) == (2, 2)
    assert (annex["releases"], annex["releases_with_kit"]) == (2, 1)
    assert groups[ids["jail"]]["kits_anonymous"] == 3 and groups[ids["jail"]]["kits_total"] == 3
    none = groups["none"]
    assert none["label"] == "not recorded"
    assert (none["overdose_responses_reported"], none["deaths_reported"]) == (2, 1)
    assert (none["releases"], none["releases_with_kit"]) == (1, 0)
    # One facility; an Organization includes the Locations it manages.
    annex_only = (
        await jail.get("/v1/naloxone/summary", params=PERIOD | {"facility": ids["annex"]})
    ).json()
    assert annex_only["totals"]["kits_total"] == 2 and annex_only["totals"]["releases"] == 2
    org = (await jail.get("/v1/naloxone/summary", params=PERIOD | {"facility": ids["jail"]})).json()
    assert org["totals"]["kits_total"] == 16
    assert org["totals"]["releases"] == 3 and org["totals"]["overdose_responses_reported"] == 1
    r = await jail.get("/v1/naloxone/summary", params={"facility": "Location/nope"})
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["facility"]
    r = await jail.get("/v1/naloxone/summary", params={"from": "2026-10-02", "to": "2026-10-01"})
    assert r.status_code == 422
    assert (await jail.get("/v1/naloxone/summary", params={"group_by": "week"})).status_code == 422


async def test_summary_reads_only_the_referrals_that_can_reach_its_period(
    net: dict[str, Any], dataset: dict[str, Any]
) -> None:
    """A release window without an end is open-ended to FHIR's ``ge``: the summary once read
    every such referral ever made. It reads the ones starting in reach of the period, and the
    earlier referrals of the same people, which may join a release begun before the period."""
    jail, admin = net["jail"], net["admin"]
    jail_org = net["ids"]["jail"]
    p5 = f"Patient/{(await fhir_post(jail, {'resourceType': 'Patient', 'gender': 'female'}))['id']}"
    # P-5: released on October 10 (window to the 18th); a second referral on the 17th is the
    # same release, begun before the period, so it is not a release of the period.
    first = await fhir_post(
        jail, service_request(p5, "2026-10-10T09:00:00-04:00", end="2026-10-18", requester=jail_org)
    )
    await fhir_post(jail, service_request(p5, "2026-10-17T09:00:00-04:00", requester=jail_org))
    period = {"from": "2026-10-15", "to": "2026-10-31"}
    r = await jail.get("/v1/naloxone/summary", params=period)
    assert r.status_code == 200, r.text
    assert r.json()["totals"]["releases"] == 2  # P-2 on October 20, P-4 on October 25

    events = (
        await admin.get("/fhir/AuditEvent", params={"request-id": r.headers["x-request-id"]})
    ).json()["entry"]
    read = {  # entities name the version read: Type/id/_history/n
        "/".join((entity.get("what") or {}).get("reference", "").split("/")[:2])
        for event in events
        for entity in event["resource"]["entity"]
    }
    referrals = (
        await admin.get("/fhir/ServiceRequest", params={"category": "3457005", "_count": "100"})
    ).json()["entry"]
    by_patient: dict[str, set[str]] = {}
    for entry in referrals:
        sr = entry["resource"]
        by_patient.setdefault(sr["subject"]["reference"], set()).add(f"ServiceRequest/{sr['id']}")
    # Released in September and early October, with no end: out of reach, not read.
    assert not (by_patient[dataset["p1"]] | by_patient[dataset["p3"]]) & read
    assert by_patient[dataset["p2"]] | by_patient[dataset["p4"]] <= read
    assert f"ServiceRequest/{first['id']}" in read  # the earlier referral that joins P-5's


async def test_summary_by_intercept(net: dict[str, Any], dataset: dict[str, Any]) -> None:
    body = (
        await net["jail"].get("/v1/naloxone/summary", params=PERIOD | {"group_by": "intercept"})
    ).json()
    groups = {g["group"]: g for g in body["groups"]}
    assert set(groups) == {"0", "3", "4", "none"}
    assert groups["4"]["label"] == "Reentry"
    assert (groups["4"]["kits_to_known_people"], groups["4"]["people_given_kits"]) == (4, 3)
    assert (groups["4"]["releases"], groups["4"]["releases_with_kit"]) == (4, 2)
    assert groups["4"]["people_trained"] == 2
    assert (groups["0"]["kits_anonymous"], groups["0"]["reversals_reported"]) == (5, 1)
    assert groups["3"]["kits_anonymous"] == 3
    none = groups["none"]
    assert (none["kits_anonymous"], none["people_trained"]) == (4, 1)
    assert (none["overdose_responses_reported"], none["deaths_reported"]) == (2, 1)


async def test_summary_csv(net: dict[str, Any], dataset: dict[str, Any]) -> None:
    jail = net["jail"]
    params = PERIOD | {"group_by": "month"}
    as_json = (await jail.get("/v1/naloxone/summary", params=params)).json()
    for r in (
        await jail.get("/v1/naloxone/summary", params=params | {"format": "csv"}),
        await jail.get("/v1/naloxone/summary", params=params, headers={"Accept": "text/csv"}),
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [row["group"] for row in rows] == ["2026-09", "2026-10", "total"]
        for metric, value in as_json["totals"].items():
            assert rows[-1][metric] == str(value)
        assert rows[0]["kits_anonymous"] == "3"
    # format=json wins over the Accept header.
    r = await jail.get(
        "/v1/naloxone/summary", params=params | {"format": "json"}, headers={"Accept": "text/csv"}
    )
    assert r.json() == as_json


# --- the pre-filled checklist factor ---------------------------------------------------------


def referral(pid: str, receiver: str, release_at: str) -> dict[str, Any]:
    return jms_referral(receiver, person=person(pid), services=["naloxone"], release_at=release_at)


OVERDOSE_ANSWERS = {
    "opioid-use-pre-custody": True,
    "days-in-custody": 45,
    "overdose-ever": True,
    "fentanyl-use": "LA33-6",
    "co-use": ["benzodiazepines"],
    "injection-past-12m": False,
    "moud-at-release": "no-moud",
}


def answer_of(items: list[dict[str, Any]], link_id: str) -> Any:
    for item in items:
        if item["linkId"] == link_id:
            return item.get("answer")
        found = answer_of(item.get("item", []), link_id)
        if found is not None:
            return found
    return None


async def test_prefilled_naloxone_in_hand(net: dict[str, Any]) -> None:
    jail, otp, ids = net["jail"], net["otp"], net["ids"]
    items = json.dumps((await jail.get("/v1/instruments/overdose-risk")).json())
    assert '"naloxone-in-hand"' in items
    soon = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0).isoformat()
    ref = await v1(jail, "/v1/referrals", referral("P-10", ids["otp"], soon))
    pid = ref["patient_id"]
    url = f"/v1/people/{pid}/prefill/overdose-risk"
    before = (await jail.get(url)).json()
    assert before["answers"] == {} and before["suggestions"] == {}
    assert [w["referrals"] for w in before["release_windows"]] == [[ref["referral_id"]]]
    out = await v1(jail, "/v1/naloxone", kit("P-10", given_at=ago(hours=1), education_given=False))
    after = (await jail.get(url)).json()
    assert after["answers"] == {"naloxone-in-hand": True}
    assert after["suggestions"]["naloxone-in-hand"]["source"] == out["medication_dispense"]
    # The receiving organization sees the person through the referral, but the dispense is
    # 42 CFR Part 2 data of the jail: no suggestion until a consent names the provider.
    assert (await otp.get(url)).json()["answers"] == {}
    consent = await jail.post(
        "/v1/consents",
        json={
            "person": person("P-10"),
            "signed_at": ago(hours=1),
            "signed_by": "Dana Rivera (self)",
            "recipients": [ids["otp"]],
        },
    )
    assert consent.status_code == 201, consent.text
    assert (await otp.get(url)).json()["answers"] == {"naloxone-in-hand": True}
    # Only a suggestion: the assessor answers false and that is what is stored.
    answers = OVERDOSE_ANSWERS | {"naloxone-in-hand": False}
    assessment = await v1(
        jail,
        "/v1/assessments",
        {
            "person": person("P-10"),
            "instrument": "overdose-risk",
            "answers": answers,
            "administered_by": {"id": "S-1", "name": "Jordan Lee", "role": "nurse"},
            "administered_at": ago(minutes=10),
            "intercept": 4,
        },
    )
    qr = (await jail.get(f"/fhir/{assessment['questionnaire_response']}")).json()
    assert answer_of(qr["item"], "naloxone-in-hand") == [{"valueBoolean": False}]
    assert any("naloxone" in f["display"].lower() for f in assessment["triage"]["factors"])


async def test_prefill_ignores_family_kits_and_other_windows(net: dict[str, Any]) -> None:
    jail, hr, ids = net["jail"], net["hr"], net["ids"]
    soon = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0).isoformat()
    ref = await v1(jail, "/v1/referrals", referral("P-11", ids["otp"], soon))
    family = kit(
        "P-11",
        given_at=ago(hours=1),
        received_by="family-member",
        family_member={"relationship": "spouse"},
    )
    await v1(jail, "/v1/naloxone", family)
    url = f"/v1/people/{ref['patient_id']}/prefill/overdose-risk"
    assert (await jail.get(url)).json()["answers"] == {}
    # A kit long before the window does not count either.
    await v1(jail, "/v1/naloxone", kit("P-11", given_at=ago(days=5)))
    assert (await jail.get(url)).json()["answers"] == {}
    # No referral: nothing to compare with unless the caller names the release.
    out = await v1(jail, "/v1/naloxone", kit("P-12", given_at=ago(hours=3)))
    url12 = f"/v1/people/{out['patient_id']}/prefill/overdose-risk"
    assert (await jail.get(url12)).json() | {"patient_id": ""} == {
        "instrument": "overdose-risk",
        "patient_id": "",
        "release_windows": [],
        "answers": {},
        "suggestions": {},
    }
    named = (await jail.get(url12, params={"release_at": ago(minutes=0)})).json()
    assert named["answers"] == {"naloxone-in-hand": True}
    r = await jail.get(url12, params={"release_at": "2026-10-01T08:00:00"})
    assert r.status_code == 422 and "time zone" in r.json()["issue"][0]["diagnostics"]
    # Someone else's person is not found.
    assert (await hr.get(url12)).status_code == 404
    assert (await jail.get("/v1/people/nope/prefill/overdose-risk")).status_code == 404


async def test_oend_code_systems_are_served(net: dict[str, Any]) -> None:
    bundle = (await net["jail"].get("/fhir/CodeSystem", params={"url": OEND})).json()
    concepts = {c["code"] for c in bundle["entry"][0]["resource"]["concept"]}
    assert {"oend", "overdose-response", "naloxone-doses"} <= concepts
