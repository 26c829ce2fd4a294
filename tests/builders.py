"""Hand-written builders of FHIR JSON for tests."""

from __future__ import annotations

from typing import Any

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
