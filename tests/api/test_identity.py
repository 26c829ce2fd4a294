"""One person across organizations: person-identifier domains, the booking-number conflict,
and a party to a referral naming the Patient it received in /v1 calls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.api.test_assessments import assessment, dast
from tests.api.test_referrals import network, referral  # noqa: F401
from tests.builders import FHIR_JSON

pytestmark = pytest.mark.usefixtures("instruments")


def adams_baker(pid: str, family: str, born: str) -> dict[str, Any]:
    return {
        "person_id": pid,
        "booking_number": "BK-9",
        "family_name": family,
        "given_names": ["Sam"],
        "birth_date": born,
        "sex": "male",
    }


async def test_a_domain_makes_two_organizations_one_person(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    # Only an administrator declares a domain.
    r = await jail.put("/v1/admin/identity-domains/county", json={"organizations": [ids["jail"]]})
    assert r.status_code == 403
    r = await client.put(
        "/v1/admin/identity-domains/county", json={"organizations": [ids["jail"], "Organization/x"]}
    )
    assert r.status_code == 422 and "Organization/x is not known" in r.text
    # The jail and its health unit (here: otp) share the JMS person id.
    r = await client.put(
        "/v1/admin/identity-domains/county", json={"organizations": [ids["jail"], ids["otp"]]}
    )
    assert r.status_code == 200, r.text
    listed = (await client.get("/v1/admin/identity-domains")).json()
    assert listed == [{"domain": "county", "organizations": sorted([ids["jail"], ids["otp"]])}]
    r = await client.put("/v1/admin/identity-domains/other", json={"organizations": [ids["otp"]]})
    assert r.status_code == 422 and "in the domain county" in r.text
    booked = (await jail.post("/v1/assessments", json=assessment("dast-10", dast({1})))).json()
    screened = (await otp.post("/v1/assessments", json=assessment("dast-10", dast({2})))).json()
    elsewhere = (await peer.post("/v1/assessments", json=assessment("dast-10", dast({3})))).json()
    assert booked["patient_id"] == screened["patient_id"]
    assert elsewhere["patient_id"] != booked["patient_id"]
    # Dissolved: each organization matches by its own identifiers again.
    assert (await client.delete("/v1/admin/identity-domains/county")).status_code == 204
    assert (await client.get("/v1/admin/identity-domains")).json() == []


async def test_a_booking_number_never_moves_a_record_to_another_person(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, ids = network["jail"], network["ids"]
    adams = referral(
        ids["otp"], referral_id="R-A", person=adams_baker("PID-A1", "Adams", "1970-01-01")
    )
    r = await jail.post("/v1/referrals", json=adams)
    assert r.status_code == 201, r.text
    adams_patient = r.json()["patient_id"]
    baker = referral(
        ids["otp"], referral_id="R-B", person=adams_baker("PID-B2", "Baker", "1999-01-01")
    )
    r = await jail.post("/v1/referrals", json=baker)
    assert r.status_code == 422, r.text
    message = r.json()["issue"][0]["diagnostics"]
    assert f"Patient/{adams_patient}" in message and "PID-A1" in message and "PID-B2" in message
    assert {i["expression"][0] for i in r.json()["issue"]} == {
        "person.person_id",
        "person.booking_number",
    }
    patient = (await jail.get(f"/fhir/Patient/{adams_patient}")).json()
    assert patient["name"][0]["family"] == "Adams"  # untouched
    # A person id that finds one Patient wins; a booking number of another Patient is a conflict.
    other = adams_baker("PID-C3", "Cole", "1980-01-01")
    other["booking_number"] = "BK-10"
    r = await jail.post("/v1/referrals", json=referral(ids["otp"], referral_id="R-C", person=other))
    assert r.status_code == 201
    other["booking_number"] = "BK-9"
    r = await jail.post("/v1/referrals", json=referral(ids["otp"], referral_id="R-D", person=other))
    assert r.status_code == 422 and f"Patient/{adams_patient}" in r.text


async def test_a_party_to_a_referral_names_the_patient_it_received(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    patient = f"Patient/{ref['patient_id']}"
    consent = {
        "person": {"patient": patient},
        "signed_at": datetime.now(UTC).isoformat(),
        "signed_by": "Dana Rivera (self)",
        "recipients": [ids["jail"]],
    }
    r = await otp.post("/v1/consents", json=consent)
    assert r.status_code == 201, r.text
    assert r.json()["patient_id"] == ref["patient_id"]
    # Not a party: the Patient is not known to it.
    r = await peer.post("/v1/consents", json=consent)
    assert r.status_code == 404
    r = await otp.post("/v1/consents", json={**consent, "person": {"family_name": "X"}})
    assert r.status_code == 422


def match_params(patient: dict[str, Any], **more: Any) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "resource", "resource": {"resourceType": "Patient", **patient}}
    ]
    params += [
        {"name": k, ("valueBoolean" if isinstance(v, bool) else "valueInteger"): v}
        for k, v in more.items()
    ]
    return {"resourceType": "Parameters", "parameter": params}


async def test_patient_match_returns_only_patients_the_caller_may_read(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    patient = (await jail.get(f"/fhir/Patient/{ref['patient_id']}")).json()
    by_name = {"name": [{"family": "Rivera", "given": ["Dana"]}], "birthDate": "1988-03-14"}
    r = await otp.post("/fhir/Patient/$match", json=match_params(by_name), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert [e["resource"]["id"] for e in entries] == [ref["patient_id"]]
    assert entries[0]["search"]["score"] == 0.9
    assert entries[0]["search"]["extension"] == [
        {"url": "http://hl7.org/fhir/StructureDefinition/match-grade", "valueCode": "probable"}
    ]
    by_id = {"identifier": [patient["identifier"][0]]}
    r = await otp.post("/fhir/Patient/$match", json=match_params(by_id), headers=FHIR_JSON)
    assert r.json()["entry"][0]["search"]["score"] == 1.0
    only = match_params(by_name, onlyCertainMatches=True)
    r = await otp.post("/fhir/Patient/$match", json=only, headers=FHIR_JSON)
    assert r.json()["total"] == 0
    # An organization with no referral for the person finds nothing, whatever it knows.
    for wanted in (by_name, by_id):
        r = await peer.post("/fhir/Patient/$match", json=match_params(wanted), headers=FHIR_JSON)
        assert r.status_code == 200 and r.json()["total"] == 0
    r = await otp.post(
        "/fhir/Patient/$match", json={"resourceType": "Parameters"}, headers=FHIR_JSON
    )
    assert r.status_code == 400 and "resource" in r.text
    for malformed in (None, {}, "resource"):
        body = {"resourceType": "Parameters", "parameter": malformed}
        r = await otp.post("/fhir/Patient/$match", json=body, headers=FHIR_JSON)
        assert r.status_code == 400 and "Parameters.parameter" in r.text, r.text
    r = await otp.post(
        "/fhir/Patient/$match", json=match_params({"gender": "female"}), headers=FHIR_JSON
    )
    assert r.status_code == 400 and "identifier" in r.text


def merge_params(source: str, target: str, **more: Any) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "source-patient", "valueReference": {"reference": source}},
        {"name": "target-patient", "valueReference": {"reference": target}},
    ]
    params += [{"name": k, "valueBoolean": v} for k, v in more.items()]
    return {"resourceType": "Parameters", "parameter": params}


async def test_merge_moves_every_record_and_keeps_history(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    first = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    twin = referral(ids["otp"], referral_id="REF-2")
    twin["person"] = {**twin["person"], "person_id": "P-1-DUP", "booking_number": "B-DUP"}
    second = (await jail.post("/v1/referrals", json=twin)).json()
    assert second["patient_id"] != first["patient_id"]
    source, target = f"Patient/{second['patient_id']}", f"Patient/{first['patient_id']}"
    consent = {
        "person": {"patient": source},
        "signed_at": datetime.now(UTC).isoformat(),
        "signed_by": "Dana Rivera (self)",
        "recipients": [ids["otp"]],
    }
    made = (await jail.post("/v1/consents", json=consent)).json()
    # Administrators only; a preview changes nothing.
    r = await jail.post(
        "/fhir/Patient/$merge", json=merge_params(source, target), headers=FHIR_JSON
    )
    assert r.status_code == 403
    for malformed in (None, {}, "source-patient"):
        body = {"resourceType": "Parameters", "parameter": malformed}
        r = await client.post("/fhir/Patient/$merge", json=body, headers=FHIR_JSON)
        assert r.status_code == 400 and "Parameters.parameter" in r.text, r.text
    r = await client.post(
        "/fhir/Patient/$merge", json=merge_params(source, target, preview=True), headers=FHIR_JSON
    )
    assert r.status_code == 200 and "preview" in r.text
    sr = (await jail.get(f"/fhir/ServiceRequest/{second['referral_id']}")).json()
    assert sr["subject"]["reference"] == source
    r = await client.post(
        "/fhir/Patient/$merge", json=merge_params(source, target), headers=FHIR_JSON
    )
    assert r.status_code == 200, r.text
    result = r.json()["parameter"][1]["resource"]
    assert {"other": {"reference": source}, "type": "replaces"} in result["link"]
    assert {
        "system": "https://handoff.dev/fhir/sid/" + ids["jail"].split("/")[1] + "/person-id",
        "value": "P-1-DUP",
        "use": "usual",
    } not in result["identifier"]
    assert any(i["value"] == "P-1-DUP" and i["use"] == "old" for i in result["identifier"])
    # The old id says where the person went.
    old = (await jail.get(f"/fhir/{source}")).json()
    assert old["active"] is False
    assert old["link"] == [{"other": {"reference": target}, "type": "replaced-by"}]
    # Every referral, Task and consent follows; the history keeps where they were.
    sr = (await jail.get(f"/fhir/ServiceRequest/{second['referral_id']}")).json()
    assert sr["subject"]["reference"] == target
    task = (await otp.get(f"/fhir/Task/{second['task_id']}")).json()
    assert task["for"]["reference"] == target
    moved = (await jail.get(f"/fhir/Consent/{made['consent_id']}")).json()
    assert moved["patient"]["reference"] == target
    history = (await jail.get(f"/fhir/ServiceRequest/{second['referral_id']}/_history")).json()
    assert [e["resource"]["subject"]["reference"] for e in history["entry"]][-1] == source
    # The jail's person id for the twin now finds the merged person.
    r = await jail.post(
        "/fhir/Patient/$match",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "resource",
                    "resource": {
                        "resourceType": "Patient",
                        "identifier": [
                            {
                                "system": "https://handoff.dev/fhir/sid/"
                                + ids["jail"].split("/")[1]
                                + "/person-id",
                                "value": "P-1-DUP",
                            }
                        ],
                    },
                }
            ],
        },
        headers=FHIR_JSON,
    )
    assert target.removeprefix("Patient/") in [e["resource"]["id"] for e in r.json()["entry"]]
    audit = (await client.get("/fhir/AuditEvent", params={"entity": target})).json()
    assert audit.get("entry")
