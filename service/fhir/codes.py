"""Code systems and identifiers Handoff defines, and the extensions that carry them."""

from __future__ import annotations

from typing import Any

HANDOFF = "https://handoff.dev/fhir"
SIM_SYSTEM = f"{HANDOFF}/CodeSystem/sim-intercept"
SIM_EXTENSION = f"{HANDOFF}/StructureDefinition/sim-intercept"
STAFF_ROLE_SYSTEM = f"{HANDOFF}/CodeSystem/staff-role"
ADMINISTERED_AT_EXTENSION = f"{HANDOFF}/StructureDefinition/administered-at"

# Sequential Intercept Model (Policy Research Associates): where in the justice system the
# contact happens.
SIM_INTERCEPTS: dict[int, str] = {
    0: "Community services (crisis lines, mobile crisis, pre-arrest)",
    1: "Law enforcement",
    2: "Initial detention and initial court hearings",
    3: "Jails and courts",
    4: "Reentry",
    5: "Community corrections (probation, parole)",
}

STAFF_ROLES: dict[str, str] = {
    "peer-specialist": "Peer recovery specialist",
    "nurse": "Nurse",
    "clinician": "Clinician",
    "classification-officer": "Classification officer",
    "case-manager": "Case manager",
    "reentry-coordinator": "Reentry coordinator",
    "other": "Other staff",
}


def intercept_coding(intercept: int) -> dict[str, Any]:
    return {"system": SIM_SYSTEM, "code": str(intercept), "display": SIM_INTERCEPTS[intercept]}


def intercept_extension(intercept: int) -> dict[str, Any]:
    return {"url": SIM_EXTENSION, "valueCoding": intercept_coding(intercept)}


def sim_code_system() -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": "sim-intercept",
        "url": SIM_SYSTEM,
        "version": "1.0.0",
        "name": "SequentialInterceptModel",
        "title": "Sequential Intercept Model intercepts",
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "description": "Intercepts 0-5 of the Sequential Intercept Model, recorded on every "
        "referral and assessment.",
        "concept": [{"code": str(k), "display": v} for k, v in SIM_INTERCEPTS.items()],
    }


def staff_role_code_system() -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": "staff-role",
        "url": STAFF_ROLE_SYSTEM,
        "version": "1.0.0",
        "name": "HandoffStaffRole",
        "title": "Roles of justice and program staff who administer or refer",
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "concept": [{"code": k, "display": v} for k, v in STAFF_ROLES.items()],
    }


def staff_reference(
    *, organization: str, staff_id: str | None, name: str, role: str
) -> dict[str, Any]:
    """A logical reference to a staff member (no Practitioner resource needed)."""
    ref: dict[str, Any] = {"display": f"{name} ({STAFF_ROLES.get(role, role)})"}
    if staff_id:
        ref["identifier"] = {
            "system": f"{HANDOFF}/sid/{organization.split('/', 1)[-1]}/staff-id",
            "value": staff_id,
        }
    return ref
