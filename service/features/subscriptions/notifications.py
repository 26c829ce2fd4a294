"""Notification Bundles (Backport IG 1.1.0, R4): a ``history`` Bundle whose first entry is the
subscription status (a ``Parameters`` resource, profile backport-subscription-status-r4),
followed by one entry per event focus for ``id-only`` and ``full-resource`` payloads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from service.features.subscriptions.spec import BACKPORT
from service.fhir.dates import format_instant

STATUS_PROFILE: Final = f"{BACKPORT}/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE: Final = (
    f"{BACKPORT}/StructureDefinition/backport-subscription-notification-r4"
)


@dataclass
class Shown:
    """One event as the subscriber may see it at send time."""

    number: int
    timestamp: datetime
    focus: str | None  # "Type/id" (None: no longer visible to the subscriber)
    method: str = "PUT"  # POST (created), PUT (changed), DELETE
    resource: dict[str, Any] | None = None  # full-resource only
    context: list[str] = field(default_factory=list)


def status_parameters(
    *,
    base_url: str,
    subscription_id: str,
    topic: str,
    status: str,
    kind: str,
    events_since_start: int,
    events: list[Shown],
    content: str,
    error: str | None = None,
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{base_url}/Subscription/{subscription_id}"},
        },
        {"name": "topic", "valueCanonical": topic},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]
    for e in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(e.number)},
            {"name": "timestamp", "valueInstant": format_instant(e.timestamp)},
        ]
        if content != "empty" and e.focus is not None:
            parts.append(
                {"name": "focus", "valueReference": {"reference": f"{base_url}/{e.focus}"}}
            )
            parts.extend(
                {"name": "additional-context", "valueReference": {"reference": f"{base_url}/{c}"}}
                for c in e.context
            )
        params.append({"name": "notification-event", "part": parts})
    if error:
        params.append(
            {
                "name": "error",
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/subscription-error",
                            "code": "no-response",
                        }
                    ],
                    "text": error,
                },
            }
        )
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": params,
    }


def notification_bundle(
    *,
    base_url: str,
    subscription_id: str,
    topic: str,
    status: str,
    kind: str,
    events_since_start: int,
    events: list[Shown],
    content: str,
    error: str | None = None,
) -> dict[str, Any]:
    """A notification (handshake, heartbeat, event-notification) or a ``$events`` answer
    (query-event): a history Bundle, entry[0] the status dressed as a GET of ``$status``."""
    status_resource = status_parameters(
        base_url=base_url,
        subscription_id=subscription_id,
        topic=topic,
        status=status,
        kind=kind,
        events_since_start=events_since_start,
        events=events,
        content=content,
        error=error,
    )
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{status_resource['id']}",
            "resource": status_resource,
            "request": {"method": "GET", "url": f"Subscription/{subscription_id}/$status"},
            "response": {"status": "200"},
        }
    ]
    if content != "empty":
        seen: set[tuple[str, str]] = set()
        for e in events:
            if e.focus is None:
                continue
            version = (e.resource or {}).get("meta", {}).get("versionId", "")
            key = (e.focus, version)
            if key in seen:
                continue
            seen.add(key)
            entry: dict[str, Any] = {
                "fullUrl": f"{base_url}/{e.focus}",
                "request": {
                    "method": e.method,
                    "url": e.focus if e.method != "POST" else e.focus.split("/")[0],
                },
                "response": {"status": {"POST": "201", "DELETE": "204"}.get(e.method, "200")},
            }
            if e.resource is not None:
                entry["resource"] = e.resource
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": format_instant(datetime.now(UTC)),
        "entry": entries,
    }
