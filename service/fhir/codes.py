"""Code systems and identifiers Handoff defines, and the extensions that carry them."""

from __future__ import annotations

from dataclasses import dataclass
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


# --- referral vocabulary ------------------------------------------------------------------------

SNOMED = "http://snomed.info/sct"
SERVICE_SYSTEM = f"{HANDOFF}/CodeSystem/referral-service"
BUSINESS_STATUS_SYSTEM = f"{HANDOFF}/CodeSystem/warm-handoff-status"
BSER_STATUS_SYSTEM = "http://hl7.org/fhir/us/bser/CodeSystem/TaskBusinessStatusCS"
STATUS_REASON_SYSTEM = f"{HANDOFF}/CodeSystem/referral-status-reason"
OUTPUT_SYSTEM = f"{HANDOFF}/CodeSystem/handoff-activity"
PROGRAM_SYSTEM = f"{HANDOFF}/CodeSystem/referring-program"
PROGRAM_EXTENSION = f"{HANDOFF}/StructureDefinition/referring-program"
REFERRAL_ID_EXTENSION = f"{HANDOFF}/StructureDefinition/referral-id"
SDOHCC_TEMP = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"

CATEGORY_REFERRAL = {"system": SNOMED, "code": "3457005", "display": "Patient referral"}
CATEGORY_SOCIAL = {"system": SNOMED, "code": "410606002", "display": "Social service procedure"}


@dataclass(frozen=True)
class ServiceDef:
    display: str
    snomed: str
    snomed_display: str
    social: bool  # category 410606002 besides "patient referral"
    sud: bool  # substance-use-disorder related: 42 CFR Part 2 labels apply


# The JMS vocabulary (clinical-content.md §2.2): key -> SNOMED concept first, our code second.
SERVICES: dict[str, ServiceDef] = {
    "moud-methadone": ServiceDef(
        "MOUD continuation: methadone",
        "310653000",
        "Drug addiction therapy using methadone",
        False,
        True,
    ),
    "moud-buprenorphine": ServiceDef(
        "MOUD continuation: buprenorphine",
        "792901003",
        "Drug addiction therapy using buprenorphine",
        False,
        True,
    ),
    "moud-naltrexone": ServiceDef(
        "MOUD continuation: extended-release naltrexone",
        "266707007",
        "Drug addiction therapy",
        False,
        True,
    ),
    "sud-treatment": ServiceDef(
        "SUD treatment (assessment and counselling)",
        "401266006",
        "Referral to drug abuse counselor",
        False,
        True,
    ),
    "harm-reduction": ServiceDef(
        "Harm reduction / syringe services program",
        "720174008",
        "Drug harm reduction program",
        True,
        True,
    ),
    "naloxone": ServiceDef(
        "Overdose education and naloxone distribution",
        "460831000124102",
        "Counseling about opioid safety",
        True,
        True,
    ),
    "peer-support": ServiceDef(
        "Peer recovery support", "461481000124109", "Referral to peer support", True, True
    ),
    "housing": ServiceDef(
        "Housing services", "710911006", "Referral to housing service", True, False
    ),
    "case-management": ServiceDef(
        "Reentry care coordination",
        "423416000",
        "Substance use cessation case management",
        True,
        True,
    ),
}

# Grouping concepts: code -> (display, the services it groups). A referral names a member, not
# the group (which medication matters for continuity); a directory entry may name either.
SERVICE_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "moud": (
        "Medications for opioid use disorder (medication not specified)",
        ("moud-methadone", "moud-buprenorphine", "moud-naltrexone"),
    ),
}


SERVICE_PARENTS: dict[str, str] = {
    child: group for group, (_, kids) in SERVICE_GROUPS.items() for child in kids
}


def service_concepts() -> list[dict[str, Any]]:
    """The referral-service CodeSystem's concepts, grouping concepts with their members."""
    grouped = SERVICE_PARENTS
    concepts: list[dict[str, Any]] = []
    for code, definition in SERVICES.items():
        if code in grouped:
            continue
        concepts.append({"code": code, "display": definition.display})
    for group, (display, members) in SERVICE_GROUPS.items():
        concepts.append(
            {
                "code": group,
                "display": display,
                "property": [{"code": "notSelectable", "valueBoolean": True}],
                "concept": [{"code": m, "display": SERVICES[m].display} for m in members],
            }
        )
    return concepts


# Warm-handoff milestones (clinical-content.md §2.6), each with its BSeR equivalent.
BUSINESS_STATUSES: dict[str, tuple[str, str | None]] = {
    "referral-sent": ("Referral sent to the receiving organization", "2.0"),
    "accepted": ("Referral accepted", "3.0"),
    "declined-by-recipient": ("Declined by the receiving organization", "4.0"),
    "declined-by-patient": ("Declined by the person", "6.0"),
    "contacted-before-release": ("Person contacted before release", "5.1.4"),
    "in-reach-completed": ("Met in custody (in-reach)", "5.1.4"),
    "intake-scheduled": ("Intake scheduled", "5.1.1"),
    "release-date-confirmed": ("Release date confirmed", "5.1.1"),
    "released-unplanned": ("Released without notice", None),
    "met-at-release": ("Met at release", "5.1.4"),
    "first-appointment-scheduled": ("First appointment scheduled", "5.1.1"),
    "first-appointment-attended": ("First appointment attended", "5.1.4"),
    "no-show": ("First appointment missed (no-show)", "5.1.2"),
    "lost-to-follow-up": ("Lost to follow-up", "6.0"),
    "re-incarcerated": ("Returned to custody", "6.0"),
    "closed-engaged": ("Engaged in services", "7.0"),
    "closed-deceased": ("Died", "6.0"),
    "closed-transferred": ("Transferred elsewhere", "6.0"),
}

STATUS_REASONS: dict[str, str] = {
    "at-capacity": "At capacity",
    "not-eligible": "Not eligible for the service",
    "out-of-area": "Outside the service area",
    "declined-by-patient": "The person declined",
    "released-elsewhere": "Released to another jurisdiction",
    "unable-to-contact": "Unable to contact the person",
    "duplicate": "Duplicate referral",
    "other": "Other",
}

ACTIVITIES: dict[str, str] = {
    "met-at-release": "Met the person at release",
    "moud-dose-given": "MOUD dose given",
    "naloxone-kit-given": "Naloxone kit given",
    "intake-completed": "Intake completed",
    "first-appointment": "First appointment attended (Task.output names the Appointment)",
    "peer-session": "Peer recovery session held",
    "transport-provided": "Transport provided",
    "housing-placement": "Housing placement",
}

PROGRAM_TYPES: dict[str, str] = {
    "jail-reentry": "Jail reentry / transition planning",
    "jail-health": "Jail health services",
    "drug-court": "Drug or treatment court",
    "pretrial": "Pretrial services",
    "diversion": "Pre-arrest or post-booking diversion",
    "community-corrections": "Probation or parole",
    "post-overdose-outreach": "Post-overdose outreach",
    "crisis-response": "Crisis response (mobile crisis, crisis line, co-responder)",
    "deflection": "Law-enforcement deflection to treatment",
    "probation": "Probation",
    "parole": "Parole",
    "other": "Other",
}

# The Sequential Intercept Model intercepts at which each program type usually refers
# (published as the ``intercept`` property of the referring-program CodeSystem).
PROGRAM_INTERCEPTS: dict[str, tuple[int, ...]] = {
    "jail-reentry": (4,),
    "jail-health": (2, 3, 4),
    "drug-court": (3,),
    "pretrial": (2,),
    "diversion": (0, 1, 2),
    "community-corrections": (5,),
    "post-overdose-outreach": (0, 1),
    "crisis-response": (0,),
    "deflection": (1,),
    "probation": (5,),
    "parole": (5,),
    "other": (0, 1, 2, 3, 4, 5),
}


def code_system(
    cid: str, url: str, name: str, title: str, concepts: dict[str, str]
) -> dict[str, Any]:
    """A complete, flat Handoff CodeSystem (version 1.0.0) of ``concepts`` (code -> display)."""
    return {
        "resourceType": "CodeSystem",
        "id": cid,
        "url": url,
        "version": "1.0.0",
        "name": name,
        "title": title,
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "concept": [{"code": k, "display": v} for k, v in concepts.items()],
    }


def referral_code_systems() -> list[dict[str, Any]]:
    business = code_system(
        "warm-handoff-status",
        BUSINESS_STATUS_SYSTEM,
        "WarmHandoffStatus",
        "Warm-handoff milestones (Task.businessStatus)",
        {k: v[0] for k, v in BUSINESS_STATUSES.items()},
    )
    for concept in business["concept"]:
        bser = BUSINESS_STATUSES[concept["code"]][1]
        if bser:
            concept["property"] = [{"code": "bser", "valueString": bser}]
    business["property"] = [
        {
            "code": "bser",
            "uri": BSER_STATUS_SYSTEM,
            "description": "Equivalent BSeR TaskBusinessStatus code",
            "type": "string",
        }
    ]
    services = code_system(
        "referral-service",
        SERVICE_SYSTEM,
        "ReferralService",
        "Services a JMS may request and a directory entry may offer",
        {},
    )
    services["version"] = "1.1.0"
    services["hierarchyMeaning"] = "is-a"
    services["property"] = [
        {
            "code": "notSelectable",
            "uri": "http://hl7.org/fhir/concept-properties#notSelectable",
            "description": "A grouping concept: directory entries may offer it, referrals name "
            "one of its members",
            "type": "boolean",
        }
    ]
    services["concept"] = service_concepts()
    program = code_system(
        "referring-program",
        PROGRAM_SYSTEM,
        "ReferringProgram",
        "Type of program that made the referral, by Sequential Intercept Model intercept",
        PROGRAM_TYPES,
    )
    for concept in program["concept"]:
        concept["property"] = [
            {"code": "intercept", "valueCode": str(i)} for i in PROGRAM_INTERCEPTS[concept["code"]]
        ]
    program["property"] = [
        {
            "code": "intercept",
            "uri": SIM_SYSTEM,
            "description": "An intercept (sim-intercept code) at which this program refers",
            "type": "code",
        }
    ]
    return [
        services,
        business,
        code_system(
            "referral-status-reason",
            STATUS_REASON_SYSTEM,
            "ReferralStatusReason",
            "Why a referral was rejected, held, failed or cancelled",
            STATUS_REASONS,
        ),
        code_system(
            "handoff-activity",
            OUTPUT_SYSTEM,
            "HandoffActivity",
            "Activities that complete a warm handoff (Task.output)",
            ACTIVITIES,
        ),
        program,
    ]


def business_status(code: str) -> dict[str, Any]:
    display, bser = BUSINESS_STATUSES[code]
    codings: list[dict[str, Any]] = [
        {"system": BUSINESS_STATUS_SYSTEM, "code": code, "display": display}
    ]
    if bser:
        codings.append({"system": BSER_STATUS_SYSTEM, "code": bser})
    return {"coding": codings, "text": display}
