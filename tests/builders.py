"""Hand-written builders of FHIR JSON for tests."""

from __future__ import annotations

from typing import Any

import httpx

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def organization(name: str = "Harbor OTP", identifier: str = "org-1") -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "identifier": [{"system": "https://example.org/orgs", "value": identifier}],
        "name": name,
        "active": True,
    }


def patient(family: str = "Doe", given: str = "Jane", booking: str = "B-1") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "https://jail.example.org/booking", "value": booking}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1990-04-02",
    }


def task(
    *,
    status: str = "requested",
    owner: str | None = "Organization/prov-1",
    requester: str = "Organization/jail-1",
    patient_ref: str = "Patient/p1",
    focus: str = "ServiceRequest/sr1",
    identifier: str | None = None,
    authored_on: str = "2026-11-20T10:00:00Z",
    code: str = "approve",
) -> dict[str, Any]:
    """A Task for REST/search tests. Its code is not ``fulfill`` by default, so the referral
    workflow rules (tested in test_referrals.py) do not apply to it."""
    body: dict[str, Any] = {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "priority": "routine",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": code}]},
        "focus": {"reference": focus},
        "for": {"reference": patient_ref},
        "authoredOn": authored_on,
        "requester": {"reference": requester},
    }
    if owner:
        body["owner"] = {"reference": owner}
    if identifier:
        body["identifier"] = [{"system": "https://jail.example.org/referral", "value": identifier}]
    return body


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle of ``entries`` (each with its ``request``)."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def fhir_consent(
    writer: httpx.AsyncClient,
    patient: str,
    *,
    custodian: str,
    recipients: list[str],
    period: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Part 2 disclosure consent recorded through FHIR by ``writer``, held by ``custodian``."""
    provision: dict[str, Any] = {
        "type": "permit",
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                        }
                    ]
                },
                "reference": {"reference": r},
            }
            for r in recipients
        ],
    }
    if period is not None:
        provision["period"] = period
    body = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "64292-6"}]}],
        "patient": {"reference": patient},
        "organization": [{"reference": custodian}],
        "provision": provision,
    }
    r = await writer.post("/fhir/Consent", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


HL7_V2 = {"Content-Type": "application/hl7-v2; charset=utf-8"}


def adt_message(
    event: str,
    *,
    control_id: str,
    booking: str = "B-77",
    person_id: str = "P-100",
    when: str = "20261201083000",
    facility: str = "County Jail",
    expected_release: str = "",
    released_at: str = "",
    disposition: str = "",
    structure: str | None = None,
) -> str:
    """An HL7 v2.5.1 ADT message (ER7, CR-separated) as a county JMS sends it; ``when`` and the
    other times are HL7 TS values (YYYYMMDDHHMMSS[+/-ZZZZ])."""
    structures = {"A08": "ADT_A01", "A11": "ADT_A09", "A13": "ADT_A01", "A02": "ADT_A02"}
    kind = structure or structures.get(event, f"ADT_{event}")
    pv1 = ["PV1", "1", "I", f"MAIN^^^{facility}"] + [""] * 15 + [booking]
    pv1 += [""] * (36 - len(pv1)) + [disposition] + [""] * 7 + [when, released_at]
    segments = [
        f"MSH|^~\\&|JMS|COUNTYJAIL|HANDOFF|HANDOFF|{when}||ADT^{event}^{kind}|{control_id}|P|2.5.1",
        f"EVN|{event}|{when}",
        f"PID|1||{person_id}^^^COUNTYJAIL^PI||Rivera^Dana||19880314|F",
        "|".join(pv1),
    ]
    if expected_release:
        segments.append("PV2" + "|" * 9 + expected_release)
    return "\r".join(segments) + "\r"
