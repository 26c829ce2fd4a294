"""The built-in follow-up plan after release: a FHIR ``PlanDefinition`` whose actions are the
contacts a peer or treatment program makes after the person leaves custody (the first weeks
carry the highest overdose risk): within 24 hours, 72 hours, 7, 14 and 30 days.

Plans are data: a program publishes its own PlanDefinition (``useContext`` ``program`` naming
its Organization), and the newest active one applies to the releases after it; each action's
``timingDuration`` is how long after the release its contact is due."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from service.fhir.codes import HANDOFF, code_system

DEFAULT_PLAN_ID: Final = "post-release-follow-up"
DEFAULT_PLAN_URL: Final = f"{HANDOFF}/PlanDefinition/{DEFAULT_PLAN_ID}"
FOLLOW_UP_SYSTEM: Final = f"{HANDOFF}/CodeSystem/follow-up"
FOLLOW_UP_CONTACT: Final = "follow-up-contact"
# A follow-up Task's businessStatus once its window passed without a contact that reached the
# person (the notification worker's scan, ``features.followups.mark_overdue``).
FOLLOW_UP_OVERDUE: Final = "overdue"
FOLLOW_UP_OVERDUE_DISPLAY: Final = "Overdue: the window passed without reaching the person"
# Task.identifier of a follow-up: "<referral id>/<action id>" (one per referral and action).
FOLLOW_UP_IDENTIFIER: Final = f"{HANDOFF}/follow-up"
MEDIUM_SYSTEM: Final = f"{HANDOFF}/CodeSystem/contact-medium"
TOPIC_SYSTEM: Final = f"{HANDOFF}/CodeSystem/contact-topic"
# How a follow-up contact was made (Communication.medium) and what it covered (reasonCode).
MEDIUMS: Final = {
    "in-person": "In person",
    "phone": "Phone call",
    "text": "Text message",
    "video": "Video call",
}
TOPICS: Final = {
    "naloxone-in-hand": "Has naloxone in hand",
    "moud-adherence": "MOUD adherence",
    "housing": "Housing",
    "transport": "Transport",
    "overdose-since-release": "An overdose since release",
}
PLAN_EXTENSION: Final = f"{HANDOFF}/StructureDefinition/follow-up-plan"
USAGE_CONTEXT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/usage-context-type"
UCUM: Final = "http://unitsofmeasure.org"

_UNITS: Final = {"min": 60, "h": 3600, "d": 86400, "wk": 7 * 86400}
_DEFAULT_ACTIONS: Final = (
    ("contact-24h", "Contact within 24 hours of release", 24, "h"),
    ("contact-72h", "Contact within 72 hours of release", 72, "h"),
    ("contact-7d", "Contact within 7 days of release", 7, "d"),
    ("contact-14d", "Contact within 14 days of release", 14, "d"),
    ("contact-30d", "Contact within 30 days of release", 30, "d"),
)


def followup_code_systems() -> list[dict[str, Any]]:
    return [
        code_system(
            "follow-up",
            FOLLOW_UP_SYSTEM,
            "FollowUp",
            "Follow-up after release (Task.code, Communication.category)",
            {
                FOLLOW_UP_CONTACT: "Follow-up contact after release",
                FOLLOW_UP_OVERDUE: FOLLOW_UP_OVERDUE_DISPLAY,
            },
        ),
        code_system(
            "contact-medium",
            MEDIUM_SYSTEM,
            "ContactMedium",
            "How a follow-up contact was made (Communication.medium)",
            MEDIUMS,
        ),
        code_system(
            "contact-topic",
            TOPIC_SYSTEM,
            "ContactTopic",
            "What a follow-up contact covered (Communication.reasonCode)",
            TOPICS,
        ),
    ]


def contact_code() -> dict[str, Any]:
    return {
        "coding": [
            {
                "system": FOLLOW_UP_SYSTEM,
                "code": FOLLOW_UP_CONTACT,
                "display": "Follow-up contact after release",
            }
        ]
    }


def default_plan() -> dict[str, Any]:
    return {
        "resourceType": "PlanDefinition",
        "id": DEFAULT_PLAN_ID,
        "url": DEFAULT_PLAN_URL,
        "version": "1",
        "name": "PostReleaseFollowUp",
        "title": "Follow-up contacts after release (built-in default)",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/plan-definition-type",
                    "code": "workflow-definition",
                }
            ]
        },
        "status": "active",
        "description": "Contact the person within 24 hours, 72 hours, 7, 14 and 30 days after "
        "release; applied to accepted peer-support and treatment referrals when the release is "
        "recorded, unless the receiving program publishes its own plan.",
        "action": [
            {
                "id": action_id,
                "title": title,
                "code": [contact_code()],
                "timingDuration": {"value": value, "unit": unit, "system": UCUM, "code": unit},
            }
            for action_id, title, value, unit in _DEFAULT_ACTIONS
        ],
    }


def action_due(action: dict[str, Any]) -> timedelta | None:
    """How long after the release an action's contact is due (its ``timingDuration``), or
    None where the action gives none this server understands."""
    duration = action.get("timingDuration")
    if not isinstance(duration, dict):
        return None
    unit, value = duration.get("code") or duration.get("unit"), duration.get("value")
    if unit not in _UNITS or not isinstance(value, int | float) or value < 0:
        return None
    return timedelta(seconds=float(value) * _UNITS[str(unit)])


def is_overdue(task: dict[str, Any]) -> bool:
    """Whether a follow-up Task carries the ``overdue`` mark (its ``businessStatus``)."""
    business = task.get("businessStatus")
    codings = business.get("coding", []) if isinstance(business, dict) else []
    return any(
        isinstance(c, dict)
        and c.get("system") == FOLLOW_UP_SYSTEM
        and c.get("code") == FOLLOW_UP_OVERDUE
        for c in codings
    )
