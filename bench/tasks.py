"""The Tasks the benchmark loads and posts: ~2 KB warm-handoff referrals, varied per index.

Task ``i`` is a pure function of ``(i, owners, seed)``, so worker processes build disjoint slices
of the same data set without talking to each other.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

# One third of the Tasks are open referrals (what providers poll for); the rest are further on.
STATUSES = (
    "requested",
    "accepted",
    "in-progress",
    "requested",
    "completed",
    "cancelled",
    "requested",
    "rejected",
    "in-progress",
)
JAILS = 20
PATIENTS = 50_000
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def owner_ref(index: int) -> str:
    return f"Organization/org-{index:04d}"


def _mix(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread hash of the Task number."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def task_owner(i: int, *, owners: int, seed: int) -> int:
    """Owners are spread at random (not round-robin), as referrals arrive in real life."""
    return _mix(seed * 1_000_003 + i) % owners


def task_fields(i: int, *, owners: int, seed: int = 1) -> dict[str, str]:
    """What varies from Task to Task (the rest of the body is fixed)."""
    return {
        "num": f"{i:08d}",
        "owner": f"{task_owner(i, owners=owners, seed=seed):04d}",
        "jail": f"{i % JAILS:02d}",
        "patient": f"{i % PATIENTS:05d}",
        "date": (_EPOCH + timedelta(minutes=i // 60)).strftime("%Y-%m-%dT%H:%M:00Z"),
        "status": STATUSES[i % len(STATUSES)],
        "priority": "urgent" if i % 5 == 0 else "routine",
    }


def task_body(i: int, *, owners: int, seed: int = 1) -> dict[str, Any]:
    """A client's Task body (no id/meta: the server stamps those)."""
    return body_from(task_fields(i, owners=owners, seed=seed))


def body_from(f: dict[str, str]) -> dict[str, Any]:
    owner = f"Organization/org-{f['owner']}"
    sr = f"ServiceRequest/sr-{f['num']}"
    return {
        "resourceType": "Task",
        "identifier": [
            {
                "use": "official",
                "system": "https://jail.example.org/fhir/referral",
                "value": f"REF-{f['num']}",
            }
        ],
        "basedOn": [{"reference": sr}],
        "groupIdentifier": {
            "system": "urn:ietf:rfc:3986",
            "value": "urn:uuid:5f1c2d3e-0000-4000-8000-000000000001",
        },
        "status": f["status"],
        "businessStatus": {"text": "Awaiting community provider acceptance"},
        "intent": "order",
        "priority": f["priority"],
        "code": {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/CodeSystem/task-code",
                    "code": "fulfill",
                    "display": "Fulfill the focal request",
                }
            ]
        },
        "description": "Warm handoff from county jail to community opioid treatment program",
        "focus": {"reference": sr},
        "for": {"reference": f"Patient/p-{f['patient']}", "display": "Example Person"},
        "authoredOn": f["date"],
        "lastModified": f["date"],
        "requester": {
            "reference": f"Organization/jail-{f['jail']}",
            "display": "County Jail Health",
        },
        "performerType": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/task-performer-type",
                        "code": "performer",
                    }
                ]
            }
        ],
        "owner": {"reference": owner, "display": "Community OTP"},
        "reasonCode": {"text": "Opioid use disorder; high overdose risk after release"},
        "note": [
            {
                "authorString": "Release coordinator",
                "time": "2026-05-02T10:16:00Z",
                "text": "Release expected 2026-05-03 08:00; client consents to contact.",
            }
        ],
        "restriction": {
            "repetitions": 1,
            "period": {"start": "2026-05-02T10:15:00Z", "end": "2026-05-09T10:15:00Z"},
            "recipient": [{"reference": owner}],
        },
        "input": [
            {"type": {"text": "release-date"}, "valueDateTime": "2026-05-03T08:00:00-05:00"},
            {"type": {"text": "contact-phone"}, "valueString": "+1 555 0100"},
            {"type": {"text": "risk-score"}, "valueInteger": 7},
        ],
        "output": [
            {"type": {"text": "appointment"}, "valueReference": {"reference": "Appointment/a1"}}
        ],
    }
