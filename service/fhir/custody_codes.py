"""Handoff's custody vocabulary: a custody stay (booking to release) as an Encounter, and how
a person left custody. Published as CodeSystems with the other built-in content."""

from __future__ import annotations

from typing import Any

from service.fhir.codes import HANDOFF, code_system

CUSTODY_SYSTEM = f"{HANDOFF}/CodeSystem/custody-encounter"
RELEASE_TYPE_SYSTEM = f"{HANDOFF}/CodeSystem/release-type"
RELEASE_PLANNING_SYSTEM = f"{HANDOFF}/CodeSystem/release-planning"

# R4 has no expected end of an Encounter; R5's Encounter.plannedEndDate, carried into R4 as
# the standard cross-version extension.
EXPECTED_RELEASE_EXTENSION = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate"
)
# planned | unplanned (RELEASE_PLANNING_SYSTEM), on a released custody stay and on the
# referrals that belong to it.
RELEASE_PLANNING_EXTENSION = f"{HANDOFF}/StructureDefinition/release-planning"
# The recorded release, on a referral's ServiceRequest (valueDateTime).
RELEASED_AT_EXTENSION = f"{HANDOFF}/StructureDefinition/released-at"


def release_of_referral(sr: dict[str, Any]) -> tuple[str, str] | None:
    """(released at, planned|unplanned) recorded on a referral's ServiceRequest, or None."""
    released_at = planning = None
    for ext in sr.get("extension", []):
        if not isinstance(ext, dict):
            continue
        if ext.get("url") == RELEASED_AT_EXTENSION:
            released_at = ext.get("valueDateTime")
        elif ext.get("url") == RELEASE_PLANNING_EXTENSION:
            planning = ext.get("valueCode")
    if not isinstance(released_at, str):
        return None
    return released_at, str(planning or "planned")


CUSTODY_STAY = {
    "system": CUSTODY_SYSTEM,
    "code": "custody-stay",
    "display": "Custody stay (booking to release)",
}

CUSTODY_CONCEPTS: dict[str, str] = {
    "custody-stay": "Custody stay (booking to release)",
}

RELEASE_TYPES: dict[str, str] = {
    "court-order": "Released by court order",
    "bail": "Released on bail or bond",
    "own-recognizance": "Released on own recognizance",
    "pretrial-supervision": "Released to pretrial supervision",
    "end-of-sentence": "Sentence completed",
    "time-served": "Released for time served",
    "charges-dropped": "Charges dropped or dismissed",
    "probation": "Released to probation",
    "parole": "Released to parole",
    "transfer": "Transferred to another agency's custody",
    "hospital": "Released to a hospital",
    "deceased": "Died in custody",
    "other": "Other release",
}

RELEASE_PLANNING: dict[str, str] = {
    "planned": "Planned release (expected, with notice)",
    "unplanned": "Unplanned release (court release, bail, or earlier than expected)",
}


def release_type_coding(code: str) -> dict[str, Any]:
    return {"system": RELEASE_TYPE_SYSTEM, "code": code, "display": RELEASE_TYPES[code]}


def custody_code_systems() -> list[dict[str, Any]]:
    return [
        code_system(
            "custody-encounter",
            CUSTODY_SYSTEM,
            "CustodyEncounter",
            "Custody stays (Encounter.class and Encounter.type)",
            CUSTODY_CONCEPTS,
        ),
        code_system(
            "release-type",
            RELEASE_TYPE_SYSTEM,
            "ReleaseType",
            "How a person left custody (Encounter.hospitalization.dischargeDisposition)",
            RELEASE_TYPES,
        ),
        code_system(
            "release-planning",
            RELEASE_PLANNING_SYSTEM,
            "ReleasePlanning",
            "Whether a release was planned",
            RELEASE_PLANNING,
        ),
    ]
