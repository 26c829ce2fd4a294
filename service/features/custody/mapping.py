"""A custody stay as a FHIR R4 Encounter, and back (docs/custody.md has the table).

* ``class`` and ``type``: ``custody-stay`` of the custody-encounter CodeSystem;
* ``identifier``: the booking number (the jail's, or its identity domain's, system);
* ``status``: in-progress (in custody), finished (released), entered-in-error (a cancelled
  booking); ``period``: booked at to released at;
* ``location``: one entry per facility, the current one ``active``, earlier ones
  ``completed`` with the time of the transfer;
* the expected release: R5's ``plannedEndDate`` as its cross-version extension;
* the release: ``hospitalization.dischargeDisposition`` (release-type CodeSystem),
  ``hospitalization.destination`` and the ``release-planning`` extension (planned/unplanned);
* ``serviceProvider``: the organization that booked the person.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.fhir.custody_codes import (
    CUSTODY_STAY,
    EXPECTED_RELEASE_EXTENSION,
    RELEASE_PLANNING_EXTENSION,
    RELEASE_TYPE_SYSTEM,
)

_LOCATION_REF = re.compile(r"^Location/[A-Za-z0-9\-\.]{1,64}$")


@dataclass(frozen=True)
class Release:
    released_at: datetime
    planned: bool
    release_type: str | None
    destination: str | None


def facility_reference(facility: str | None) -> dict[str, Any] | None:
    """``Location/<id>`` as a reference; anything else as the facility's name (display)."""
    if not facility:
        return None
    if _LOCATION_REF.match(facility):
        return {"reference": facility}
    return {"display": facility}


def _facility_text(ref: Any) -> str | None:
    if not isinstance(ref, dict):
        return None
    value = ref.get("reference") or ref.get("display")
    return value if isinstance(value, str) else None


def _extension(resource: dict[str, Any], url: str) -> Any:
    for ext in resource.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


def is_custody_stay(encounter: dict[str, Any]) -> bool:
    klass = encounter.get("class") or {}
    return klass.get("system") == CUSTODY_STAY["system"] and klass.get("code") == "custody-stay"


def expected_release_of(stay: dict[str, Any]) -> str | None:
    value = _extension(stay, EXPECTED_RELEASE_EXTENSION)
    return value if isinstance(value, str) else None


def release_of(stay: dict[str, Any]) -> Release | None:
    """The recorded release of a custody stay, or None while the person is in custody."""
    end = (stay.get("period") or {}).get("end")
    if stay.get("status") != "finished" or not isinstance(end, str):
        return None
    disposition = (stay.get("hospitalization") or {}).get("dischargeDisposition") or {}
    release_type = next(
        (
            c.get("code")
            for c in disposition.get("coding", [])
            if isinstance(c, dict) and c.get("system") == RELEASE_TYPE_SYSTEM
        ),
        None,
    )
    return Release(
        released_at=datetime.fromisoformat(end.replace("Z", "+00:00")),
        planned=_extension(stay, RELEASE_PLANNING_EXTENSION) != "unplanned",
        release_type=release_type,
        destination=_facility_text((stay.get("hospitalization") or {}).get("destination")),
    )


def booking_number_of(stay: dict[str, Any]) -> str | None:
    for ident in stay.get("identifier", []):
        if isinstance(ident, dict) and str(ident.get("system", "")).endswith("/booking-number"):
            value = ident.get("value")
            return value if isinstance(value, str) else None
    return None


def stay_body(
    *,
    booking_system: str,
    booking_number: str,
    patient_id: str,
    organization: str,
    facility: str | None,
    booked_at: datetime,
    expected_release_at: datetime | None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A new custody stay, or ``base`` brought up to date (its release and transfers kept)."""
    stay: dict[str, Any] = dict(base or {"resourceType": "Encounter", "status": "in-progress"})
    start = booked_at.isoformat()
    stay["identifier"] = [
        {"use": "official", "system": booking_system, "value": booking_number},
        *[
            i
            for i in stay.get("identifier", [])
            if isinstance(i, dict) and i.get("system") != booking_system
        ],
    ]
    stay["class"] = dict(CUSTODY_STAY)
    stay["type"] = [{"coding": [dict(CUSTODY_STAY)], "text": CUSTODY_STAY["display"]}]
    stay["subject"] = {"reference": f"Patient/{patient_id}"}
    stay["period"] = {**(stay.get("period") or {}), "start": start}
    stay["serviceProvider"] = {"reference": organization}
    locations = [dict(loc) for loc in stay.get("location") or []]
    where = facility_reference(facility)
    if not locations and where is not None:
        locations = [{"location": where, "status": "active", "period": {"start": start}}]
    elif locations:
        if where is not None:
            locations[-1]["location"] = where
        locations[0]["period"] = {**(locations[0].get("period") or {}), "start": start}
    if locations:
        stay["location"] = locations
    extensions = [
        e for e in stay.get("extension", []) if e.get("url") != EXPECTED_RELEASE_EXTENSION
    ]
    if expected_release_at is not None:
        extensions.append(
            {"url": EXPECTED_RELEASE_EXTENSION, "valueDateTime": expected_release_at.isoformat()}
        )
    if extensions:
        stay["extension"] = extensions
    else:
        stay.pop("extension", None)
    return stay


def stay_view(base_url: str, stay: dict[str, Any], referrals: list[str]) -> dict[str, Any]:
    """The JMS's view of a custody stay."""
    released = release_of(stay)
    locations = stay.get("location") or []
    status = {"finished": "released", "entered-in-error": "cancelled"}.get(
        str(stay.get("status")), "in-custody"
    )
    booking_number = booking_number_of(stay)
    api_base = base_url.removesuffix("/fhir")
    return {
        "stay_id": stay.get("id"),
        "booking_number": booking_number,
        "patient_id": str((stay.get("subject") or {}).get("reference", "")).removeprefix(
            "Patient/"
        ),
        "status": status,
        "facility": _facility_text(locations[-1].get("location")) if locations else None,
        "booked_at": (stay.get("period") or {}).get("start"),
        "expected_release_at": expected_release_of(stay),
        "release": (
            {
                "released_at": (stay.get("period") or {}).get("end"),
                "planned": released.planned,
                "release_type": released.release_type,
                "destination": released.destination,
            }
            if released
            else None
        ),
        "locations": [
            {
                "facility": _facility_text(loc.get("location")),
                "status": loc.get("status"),
                "from": (loc.get("period") or {}).get("start"),
                "to": (loc.get("period") or {}).get("end"),
            }
            for loc in locations
            if isinstance(loc, dict)
        ],
        "referrals": referrals,
        "links": {
            "self": f"{api_base}/v1/bookings/{booking_number}",
            "encounter": f"{base_url}/Encounter/{stay.get('id')}",
        },
    }
