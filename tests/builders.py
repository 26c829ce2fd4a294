"""Hand-written builders of FHIR JSON for tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
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


# --- JMS (/v1) payloads ------------------------------------------------------------------------


def in_future(*, days: float = 0, hours: float = 0) -> str:
    """An ISO instant (whole seconds, UTC) that far from now: release dates must stay ahead."""
    when = datetime.now(UTC) + timedelta(days=days, hours=hours)
    return when.replace(microsecond=0).isoformat()


def jms_person(
    person_id: str = "P-1",
    *,
    family: str = "Rivera",
    given: str = "Dana",
    birth_date: str = "1988-03-14",
    sex: str = "female",
    booking_number: str | None = "",
) -> dict[str, Any]:
    """The person block of a JMS payload (booking number ``B-<person_id>`` unless given;
    ``None`` leaves it out)."""
    person: dict[str, Any] = {
        "person_id": person_id,
        "family_name": family,
        "given_names": [given],
        "birth_date": birth_date,
        "sex": sex,
    }
    if booking_number is not None:
        person["booking_number"] = booking_number or f"B-{person_id}"
    return person


def jms_referral(
    receiver: str,
    *,
    person: dict[str, Any] | None = None,
    services: Iterable[str] = ("moud-methadone",),
    release_at: str | None = None,
    intercept: int = 4,
    **extra: Any,
) -> dict[str, Any]:
    """A jail's ``POST /v1/referrals`` body: ``person`` (default ``jms_person()``) referred to
    ``receiver`` (``Organization/<id>``), released in three days unless ``release_at`` says."""
    return {
        "person": person if person is not None else jms_person(),
        "referred_by": {"id": "S-1", "name": "Jordan Lee", "role": "peer-specialist"},
        "intercept": intercept,
        "release": {"expected_at": release_at or in_future(days=3)},
        "services": list(services),
        "receiving_organization": receiver,
        **extra,
    }


SERVICE_CODES = "https://handoff.dev/fhir/CodeSystem/referral-service"
DIRECTORY_CHARACTERISTIC = "https://handoff.dev/fhir/CodeSystem/directory-characteristic"


def location(
    name: str = "Harbor OTP site",
    *,
    city: str = "Riverbend",
    lat: float | None = None,
    lon: float | None = None,
    organization: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Location",
        "status": "active",
        "name": name,
        "address": {"line": ["1 Main St"], "city": city, "state": "OH"},
    }
    if lat is not None and lon is not None:
        body["position"] = {"latitude": lat, "longitude": lon}
    if organization:
        body["managingOrganization"] = {"reference": organization}
    return body


def healthcare_service(
    name: str = "MOUD clinic",
    *,
    provided_by: str,
    services: tuple[str, ...] = ("moud-buprenorphine",),
    locations: tuple[str, ...] = (),
    accepting: bool | None = None,
    languages: tuple[str, ...] = (),
    active: bool = True,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "HealthcareService",
        "active": active,
        "providedBy": {"reference": provided_by},
        "name": name,
        "type": [{"coding": [{"system": SERVICE_CODES, "code": s} for s in services]}],
        "location": [{"reference": ref} for ref in locations],
    }
    if accepting is not None:
        code = "accepting-new-patients" if accepting else "not-accepting-new-patients"
        body["characteristic"] = [{"coding": [{"system": DIRECTORY_CHARACTERISTIC, "code": code}]}]
    if languages:
        body["communication"] = [
            {"coding": [{"system": "urn:ietf:bcp:47", "code": code}]} for code in languages
        ]
    if not locations:
        del body["location"]
    return body


BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
SDOH_TASK_TOPIC = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task"


def subscription(
    endpoint: str,
    *,
    topic: str = SDOH_TASK_TOPIC,
    filters: list[str] | None = None,
    content: str = "id-only",
    headers: list[str] | None = None,
    heartbeat: int | None = None,
    timeout: int | None = None,
    max_count: int | None = None,
    channel_type: str = "rest-hook",
    payload: str = "application/fhir+json",
) -> dict[str, Any]:
    """An R4 Backport IG 1.1.0 rest-hook Subscription."""
    extensions: list[dict[str, Any]] = []
    if heartbeat is not None:
        extensions.append(
            {"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat}
        )
    if timeout is not None:
        extensions.append({"url": f"{BACKPORT}/backport-timeout", "valueUnsignedInt": timeout})
    if max_count is not None:
        extensions.append({"url": f"{BACKPORT}/backport-max-count", "valuePositiveInt": max_count})
    channel: dict[str, Any] = {
        "type": channel_type,
        "endpoint": endpoint,
        "payload": payload,
        "_payload": {
            "extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]
        },
    }
    if extensions:
        channel["extension"] = extensions
    if headers:
        channel["header"] = headers
    body: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{BACKPORT}/backport-subscription"]},
        "status": "requested",
        "reason": "Referrals for our organization",
        "criteria": topic,
        "channel": channel,
    }
    if filters:
        body["_criteria"] = {
            "extension": [
                {"url": f"{BACKPORT}/backport-filter-criteria", "valueString": f} for f in filters
            ]
        }
    return body


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
