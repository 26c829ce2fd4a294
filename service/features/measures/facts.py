"""The measures' facts: rows of ``measure_release``, ``measure_referral`` and ``measure_event``
computed from stored resources, kept current by a write rule in the writing transaction.

A **release** is a custody stay (Encounter, class ``custody-stay``) with a recorded release
(``status`` finished, ``period.end``). Its facts, all read from the person's current resources:

* ``at_risk``: a screening Observation of the stay (effective between booking and release,
  final/amended/corrected) whose interpretation or value is a positive band of the built-in
  instruments (TAPS problem use or higher risk, DAST-10 moderate or above, SUD criteria mild or
  above) or the warm-handoff high-priority flag;
* ``screened_at``: the first completed (or amended) QuestionnaireResponse authored in the stay;
  ``screened_24h``/``screened_72h``: within 24 h / 72 h of booking;
* ``educated``: a completed overdose-education Procedure for the person in the stay;
* ``naloxone_in_hand``: a completed naloxone MedicationDispense handed to the person themself
  (not a family member) between booking and release;
* ``first_contact_at``: the first Communication that reached the person (``completed``, its
  ``sent``) at or after the release and before a next booking; ``contacted_24h``/``_72h``:
  at most 24 h / 72 h after the release (72 h 1 min is not within 72 h);
* ``treatment_started_at``: the earliest start of an attended Appointment (fulfilled, arrived,
  checked-in) ``basedOn`` a treatment/MOUD referral of the release, at or after it;
  ``treatment_14d``: on or before the 14th calendar day (UTC) after the release day;
  ``engaged_34d``: initiated within 14 days and, within 34 days after the initiation, two
  further attended appointments or a referral Task closed ``closed-engaged``;
* ``deceased_at``: ``Patient.deceasedDateTime``, a ``closed-deceased`` Task milestone, or a
  release of type ``deceased``; ``rebooked_at``: the person's next booking (any custody stay);
  ``rebooked_12m``: within 365 days of the release;
* strata: ``facility`` (the stay's location at release), ``intercept`` (the stay's first
  referral's), ``release_month`` (UTC), ``sex`` (Patient.gender), ``age_band`` (at release),
  ``stay_length`` (under-72h / 72h-or-more), ``release_type`` (planned / unplanned).

A **referral** of a release is a referral ServiceRequest (category 3457005, not entered in
error) naming the stay as ``encounter``, or, without one, authored during the stay. Its
``category`` comes from its service (MOUD and SUD treatment: treatment; harm reduction and
naloxone: harm-reduction; peer-support; others: other); ``accepted_at`` is the first version of
one of its Tasks that is accepted or beyond (the ``milestone-occurred-at`` of an ``accepted``
business status when recorded, else the version's time); ``performer`` the owner of that Task
(else of its latest Task).

An **event** is a naloxone kit record (completed MedicationDispense or SupplyDelivery of rescue
naloxone; ``quantity`` kits) or a reported reversal (overdose-response Observation with outcome
survived or transported), counted by the organization that recorded it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.features.naloxone import facts as oend_facts
from service.fhir import codes
from service.fhir import oend_codes as oend
from service.fhir.custody_codes import RELEASE_TYPE_SYSTEM
from service.storage import repository as repo
from service.storage.db import write_transaction
from service.storage.tables import (
    measure_event,
    measure_referral,
    measure_release,
    search_index,
)
from service.storage.upsert import upsert
from service.workflows.access import CREATOR_PARAM
from service.workflows.rules import RuleSet, WrittenEvent

resource_t = repo.resource_t
history_t = repo.history_t

POSITIVE_CODES = frozenset(
    {
        "taps-problem-use",
        "taps-higher-risk",
        "dast10-moderate",
        "dast10-substantial",
        "dast10-severe",
        "sud-criteria-mild",
        "sud-criteria-moderate",
        "sud-criteria-severe",
        "warm-handoff-high-priority",
    }
)
TREATMENT_SERVICES = frozenset(
    {"moud-methadone", "moud-buprenorphine", "moud-naltrexone", "sud-treatment"}
)
HARM_REDUCTION_SERVICES = frozenset({"harm-reduction", "naloxone"})
CATEGORIES = ("treatment", "harm-reduction", "peer-support")
ACCEPTED_OR_BEYOND = frozenset({"accepted", "in-progress", "on-hold", "completed"})
ATTENDED = frozenset({"fulfilled", "arrived", "checked-in"})
FINAL = frozenset({"final", "amended", "corrected"})
AGE_BANDS = ("under-18", "18-24", "25-34", "35-44", "45-54", "55-64", "65-plus", "unknown")
SEXES = ("female", "male", "other", "unknown")
PATIENT_TYPES = (
    "Encounter",
    "ServiceRequest",
    "Task",
    "QuestionnaireResponse",
    "Observation",
    "Procedure",
    "MedicationDispense",
    "Communication",
    "Appointment",
)
EVENT_TYPES = ("MedicationDispense", "SupplyDelivery", "Observation")
_SNOMED_SERVICE = {d.snomed: key for key, d in codes.SERVICES.items()}
DAY = timedelta(days=1)


# --- plain values (also the bulk API) ---------------------------------------------------------


def age_band(birth: date | None, at: datetime) -> str:
    if birth is None:
        return "unknown"
    day = at.date()
    age = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
    if age < 18:
        return "under-18"
    for low, band in ((65, "65-plus"), (55, "55-64"), (45, "45-54"), (35, "35-44"), (25, "25-34")):
        if age >= low:
            return band
    return "18-24"


def within_days(start: datetime, end: datetime | None, days: int) -> bool:
    """``end`` on or before the ``days``-th calendar day (UTC) after ``start``'s day."""
    if end is None or end < start:
        return False
    return (end.astimezone(UTC).date() - start.astimezone(UTC).date()).days <= days


def _clip(value: str | None, size: int) -> str | None:
    return value[:size] if value is not None else None


def _sim(value: str | int | None) -> str | None:
    """A Sequential Intercept Model intercept 0-5, else None (FHIR writers may send any code)."""
    text = str(value) if value is not None else None
    return text if text in ("0", "1", "2", "3", "4", "5") else None


def release_row(
    *,
    release_id: str,
    patient: str,
    booked_at: datetime,
    released_at: datetime,
    organization: str | None = None,
    facility: str | None = None,
    intercept: str | int | None = None,
    planned: bool = True,
    sex: str | None = None,
    birth_date: date | None = None,
    at_risk: bool = True,
    screened_at: datetime | None = None,
    educated: bool = False,
    naloxone_in_hand: bool = False,
    first_contact_at: datetime | None = None,
    treatment_started_at: datetime | None = None,
    engaged: bool = False,
    deceased_at: datetime | None = None,
    rebooked_at: datetime | None = None,
) -> dict[str, Any]:
    """One ``measure_release`` row from plain values (derived columns computed here)."""
    stay_hours = (released_at - booked_at).total_seconds() / 3600
    contact_hours = (
        (first_contact_at - released_at).total_seconds() / 3600
        if first_contact_at is not None and first_contact_at >= released_at
        else None
    )
    screened = (screened_at - booked_at).total_seconds() / 3600 if screened_at is not None else None
    treated = within_days(released_at, treatment_started_at, 14)
    return {
        "release_id": release_id,
        "patient": patient,
        "organization": _clip(organization, 128),
        "facility": _clip(facility, 128),
        "intercept": _sim(intercept),
        "booked_at": booked_at,
        "released_at": released_at,
        "release_month": released_at.astimezone(UTC).strftime("%Y-%m"),
        "release_type": "planned" if planned else "unplanned",
        "stay_length": "under-72h" if stay_hours < 72 else "72h-or-more",
        "stay_hours": stay_hours,
        "sex": sex if sex in SEXES else "unknown",
        "age_band": age_band(birth_date, released_at),
        "at_risk": int(at_risk),
        "screened_at": screened_at,
        "screened_24h": int(screened is not None and 0 <= screened <= 24),
        "screened_72h": int(screened is not None and 0 <= screened <= 72),
        "educated": int(educated),
        "naloxone_in_hand": int(naloxone_in_hand),
        "first_contact_at": first_contact_at if contact_hours is not None else None,
        "contact_hours": contact_hours,
        "contacted_24h": int(contact_hours is not None and contact_hours <= 24),
        "contacted_72h": int(contact_hours is not None and contact_hours <= 72),
        "treatment_started_at": treatment_started_at,
        "treatment_14d": int(treated),
        "engaged_34d": int(treated and engaged),
        "deceased_at": deceased_at,
        "rebooked_at": rebooked_at,
        "rebooked_12m": int(
            rebooked_at is not None
            and rebooked_at > released_at
            and rebooked_at - released_at <= timedelta(days=365)
        ),
        **dict.fromkeys(REFERRAL_FLAGS, 0),
    }


def referral_row(
    *,
    referral_id: str,
    release_id: str,
    patient: str,
    released_at: datetime,
    category: str,
    intercept: str | int | None = None,
    requester: str | None = None,
    performer: str | None = None,
    accepted_at: datetime | None = None,
    status: str = "requested",
) -> dict[str, Any]:
    """One ``measure_referral`` row from plain values."""
    return {
        "referral_id": referral_id,
        "release_id": release_id,
        "patient": patient,
        "category": category if category in CATEGORIES else "other",
        "intercept": _sim(intercept),
        "requester": _clip(requester, 128),
        "performer": _clip(performer, 128),
        "accepted_at": accepted_at,
        "accepted_before_release": int(accepted_at is not None and accepted_at < released_at),
        "status": status[:32],
    }


def event_row(
    *,
    event_id: str,
    kind: str,
    occurred_at: datetime,
    organization: str | None = None,
    facility: str | None = None,
    intercept: str | int | None = None,
    quantity: float = 1.0,
) -> dict[str, Any]:
    """One ``measure_event`` row (kind ``kit`` or ``reversal``) from plain values."""
    return {
        "event_id": event_id,
        "kind": kind,
        "occurred_at": occurred_at,
        "month": occurred_at.astimezone(UTC).strftime("%Y-%m"),
        "organization": _clip(organization, 128),
        "facility": _clip(facility, 128),
        "intercept": _sim(intercept),
        "quantity": float(quantity),
    }


REFERRAL_FLAGS = ("referred", "a_treatment", "a_harm", "a_peer", "a_any")
CATEGORY_FLAGS = {"treatment": "a_treatment", "harm-reduction": "a_harm", "peer-support": "a_peer"}


def with_referral_flags(
    releases: Sequence[dict[str, Any]], referrals: Sequence[dict[str, Any]]
) -> None:
    """Set the release rows' referral columns from their referral rows (in place)."""
    by_release: dict[str, list[dict[str, Any]]] = {}
    for ref in referrals:
        by_release.setdefault(ref["release_id"], []).append(ref)
    for row in releases:
        mine = by_release.get(row["release_id"], [])
        row["referred"] = int(bool(mine))
        accepted = [r for r in mine if r["accepted_before_release"]]
        row["a_any"] = int(bool(accepted))
        for category, flag in CATEGORY_FLAGS.items():
            row[flag] = int(any(r["category"] == category for r in accepted))


async def bulk_insert(
    conn: AsyncConnection,
    releases: Sequence[dict[str, Any]] = (),
    referrals: Sequence[dict[str, Any]] = (),
    events: Sequence[dict[str, Any]] = (),
    *,
    batch: int = 5000,
) -> None:
    """Insert rows built by ``release_row``/``referral_row``/``event_row`` (executemany).
    The releases' referral columns are set from the referrals given in the same call."""
    if referrals:
        with_referral_flags(releases, referrals)
    for table, rows in (
        (measure_release, releases),
        (measure_referral, referrals),
        (measure_event, events),
    ):
        for i in range(0, len(rows), batch):
            await conn.execute(insert(table), list(rows[i : i + batch]))


# --- reading stored resources -----------------------------------------------------------------


def _instant(value: Any) -> datetime | None:
    return oend_facts.instant(value)


def _ref(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) and ref else None


def _ext(resource: dict[str, Any], url: str) -> Any:
    for ext in resource.get("extension", []) or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


def _codes(concept: Any) -> set[str]:
    if not isinstance(concept, dict):
        return set()
    return {str(c.get("code")) for c in concept.get("coding", []) or [] if isinstance(c, dict)}


def patients_of(body: dict[str, Any] | None) -> set[str]:
    """The Patients a resource is about."""
    if not body:
        return set()
    if body.get("resourceType") == "Patient" and body.get("id"):
        return {f"Patient/{body['id']}"}
    found = {
        ref
        for key in ("subject", "for", "patient")
        if (ref := _ref(body.get(key))) and ref.startswith("Patient/")
    }
    for participant in body.get("participant", []) or []:
        ref = _ref(participant.get("actor")) if isinstance(participant, dict) else None
        if ref and ref.startswith("Patient/"):
            found.add(ref)
    return found


async def _resources_of(conn: AsyncConnection, patient: str) -> dict[str, list[dict[str, Any]]]:
    stmt = (
        select(resource_t.c.resource_type, resource_t.c.raw)
        .select_from(
            resource_t.join(
                search_index,
                and_(
                    search_index.c.resource_type == resource_t.c.resource_type,
                    search_index.c.resource_id == resource_t.c.id,
                    search_index.c.version_id == resource_t.c.version_id,
                ),
            )
        )
        .where(
            search_index.c.param == "patient",
            search_index.c.value == patient,
            search_index.c.resource_type.in_(PATIENT_TYPES),
            resource_t.c.deleted.is_(False),
        )
    )
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in PATIENT_TYPES}
    seen: set[tuple[str, str]] = set()
    for rtype, raw in (await conn.execute(stmt)).all():
        if not raw:
            continue
        body = orjson.loads(raw)
        key = (rtype, str(body.get("id")))
        if key not in seen:
            seen.add(key)
            out[rtype].append(body)
    return out


async def _task_versions(
    conn: AsyncConnection, task_ids: Iterable[str]
) -> dict[str, list[tuple[datetime, dict[str, Any]]]]:
    ids = sorted(set(task_ids))
    out: dict[str, list[tuple[datetime, dict[str, Any]]]] = {i: [] for i in ids}
    if not ids:
        return out
    stmt = (
        select(history_t.c.id, history_t.c.last_updated, history_t.c.raw)
        .where(history_t.c.resource_type == "Task", history_t.c.id.in_(ids))
        .order_by(history_t.c.id, history_t.c.version_id)
    )
    for rid, updated, raw in (await conn.execute(stmt)).all():
        if raw:
            out[rid].append((updated, orjson.loads(raw)))
    return out


def _milestone(task: dict[str, Any]) -> tuple[str | None, datetime | None]:
    status = task.get("businessStatus") or {}
    code = next(
        (
            c.get("code")
            for c in status.get("coding", []) or []
            if isinstance(c, dict) and c.get("system") == codes.BUSINESS_STATUS_SYSTEM
        ),
        None,
    )
    from service.features.appointments import MILESTONE_AT_EXTENSION

    return code, _instant(_ext(status, MILESTONE_AT_EXTENSION))


def category_of(sr: dict[str, Any]) -> str:
    service = None
    for c in (sr.get("code") or {}).get("coding", []) or []:
        if not isinstance(c, dict):
            continue
        if c.get("system") == codes.SERVICE_SYSTEM and c.get("code") in codes.SERVICES:
            service = c.get("code")
            break
        if c.get("system") == codes.SNOMED and c.get("code") in _SNOMED_SERVICE:
            service = service or _SNOMED_SERVICE[str(c.get("code"))]
    if service in TREATMENT_SERVICES:
        return "treatment"
    if service in HARM_REDUCTION_SERVICES:
        return "harm-reduction"
    if service == "peer-support":
        return "peer-support"
    return "other"


def _is_referral(sr: dict[str, Any]) -> bool:
    return sr.get("status") != "entered-in-error" and any(
        isinstance(c, dict) and c.get("system") == codes.SNOMED and c.get("code") == "3457005"
        for category in sr.get("category", []) or []
        if isinstance(category, dict)
        for c in category.get("coding", []) or []
    )


def _intercept(resource: dict[str, Any]) -> str | None:
    value = _ext(resource, codes.SIM_EXTENSION)
    code = value.get("code") if isinstance(value, dict) else None
    return str(code) if code is not None else None


def _facility(stay: dict[str, Any]) -> str | None:
    locations = [loc for loc in stay.get("location", []) or [] if isinstance(loc, dict)]
    if not locations:
        return None
    where = locations[-1].get("location") or {}
    value = where.get("reference") or where.get("display")
    return value if isinstance(value, str) else None


def _is_stay(enc: dict[str, Any]) -> bool:
    from service.features.custody.mapping import is_custody_stay

    return is_custody_stay(enc) and enc.get("status") != "entered-in-error"


@dataclass
class _Stay:
    body: dict[str, Any]
    booked: datetime
    released: datetime | None


async def compute_patient(
    conn: AsyncConnection, patient: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The release and referral rows of one person, from their stored resources."""
    from service.features.custody.mapping import release_of

    found = await _resources_of(conn, patient)
    stays: list[_Stay] = []
    for enc in found["Encounter"]:
        if not _is_stay(enc):
            continue
        booked = _instant((enc.get("period") or {}).get("start"))
        if booked is None:
            continue
        rel = release_of(enc)
        stays.append(_Stay(enc, booked, rel.released_at if rel else None))
    if not any(s.released for s in stays):
        return [], []
    stays.sort(key=lambda s: s.booked)
    pid = patient.split("/", 1)[1]
    stored_patient = await repo.get_current(conn, "Patient", pid)
    person = orjson.loads(stored_patient.raw) if stored_patient and stored_patient.raw else {}
    birth = oend_facts.day_of(person.get("birthDate"))
    deceased = [d] if (d := _instant(person.get("deceasedDateTime"))) else []

    referrals = [sr for sr in found["ServiceRequest"] if _is_referral(sr)]
    tasks_by_sr: dict[str, list[dict[str, Any]]] = {}
    for task in found["Task"]:
        focus = _ref(task.get("focus")) or ""
        if focus.startswith("ServiceRequest/"):
            tasks_by_sr.setdefault(focus.split("/", 1)[1], []).append(task)
        code, at = _milestone(task)
        if code == "closed-deceased":
            deceased.append(
                at or _instant(task.get("lastModified")) or datetime.max.replace(tzinfo=UTC)
            )
    versions = await _task_versions(conn, [t["id"] for ts in tasks_by_sr.values() for t in ts])
    medications = oend_facts.Medications(conn)

    positive: list[datetime] = []
    for obs in found["Observation"]:
        if obs.get("status") not in FINAL:
            continue
        values = _codes(obs.get("valueCodeableConcept"))
        for concept in obs.get("interpretation", []) or []:
            values |= _codes(concept)
        if values & POSITIVE_CODES:
            when = _instant(obs.get("effectiveDateTime")) or _instant(
                (obs.get("effectivePeriod") or {}).get("start")
            )
            if when is not None:
                positive.append(when)
    screenings = sorted(
        at
        for qr in found["QuestionnaireResponse"]
        if qr.get("status") in ("completed", "amended") and (at := _instant(qr.get("authored")))
    )
    educations = [
        at
        for proc in found["Procedure"]
        if proc.get("status") == "completed"
        and oend.is_education(proc.get("code"))
        and _ref(proc.get("subject")) == patient
        and (
            at := _instant(
                proc.get("performedDateTime") or (proc.get("performedPeriod") or {}).get("start")
            )
        )
    ]
    kits: list[datetime] = []
    for md in found["MedicationDispense"]:
        parts = oend_facts.kit_parts(md)
        at = _instant(parts.when)
        receivers = [_ref(r) for r in md.get("receiver", []) or []]
        via_family = bool(_ref(_ext(md, oend.RECEIVER_R5_EXTENSION))) or any(
            r and r.startswith("RelatedPerson/") for r in receivers
        )
        if (
            md.get("status") == "completed"
            and at is not None
            and not via_family
            and _ref(md.get("subject")) == patient
            and await medications.is_naloxone(parts)
        ):
            kits.append(at)
    contacts = sorted(
        at
        for com in found["Communication"]
        if com.get("status") == "completed" and (at := _instant(com.get("sent")))
    )
    attended: dict[str, list[datetime]] = {}
    for appt in found["Appointment"]:
        start = _instant(appt.get("start"))
        if appt.get("status") not in ATTENDED or start is None:
            continue
        for based in appt.get("basedOn", []) or []:
            ref = _ref(based) or ""
            if ref.startswith("ServiceRequest/"):
                attended.setdefault(ref.split("/", 1)[1], []).append(start)

    release_rows: list[dict[str, Any]] = []
    referral_rows: list[dict[str, Any]] = []
    for index, stay in enumerate(stays):
        released = stay.released
        if released is None:
            continue
        enc = stay.body
        later = [s.booked for s in stays[index + 1 :] if s.booked > released]
        next_booking = min(later) if later else None
        mine = [
            sr
            for sr in referrals
            if _ref(sr.get("encounter")) == f"Encounter/{enc['id']}"
            or (
                _ref(sr.get("encounter")) is None
                and (authored := _instant(sr.get("authoredOn"))) is not None
                and stay.booked <= authored <= released
            )
        ]
        mine.sort(key=lambda sr: str(sr.get("authoredOn") or ""))

        def inside(at: datetime, *, low: datetime = stay.booked, high: datetime = released) -> bool:
            return low <= at <= high

        first_contact = next(
            (c for c in contacts if c >= released and (next_booking is None or c < next_booking)),
            None,
        )
        treatment_starts = sorted(
            at
            for sr in mine
            if category_of(sr) == "treatment"
            for at in attended.get(str(sr["id"]), [])
            if at >= released
        )
        started = treatment_starts[0] if treatment_starts else None
        engaged = False
        if started is not None:
            horizon = timedelta(days=34)
            further = [
                at
                for sr in mine
                for at in attended.get(str(sr["id"]), [])
                if at > started and at - started <= horizon
            ]
            closed = False
            for sr in mine:
                for task in tasks_by_sr.get(str(sr["id"]), []):
                    code, at = _milestone(task)
                    when = at or _instant(task.get("lastModified"))
                    if code == "closed-engaged" and (when is None or when - started <= horizon):
                        closed = True
            engaged = len(further) >= 2 or closed
        disposition = (enc.get("hospitalization") or {}).get("dischargeDisposition") or {}
        died_in_custody = any(
            isinstance(c, dict)
            and c.get("system") == RELEASE_TYPE_SYSTEM
            and c.get("code") == "deceased"
            for c in disposition.get("coding", []) or []
        )
        deaths = [d for d in deceased if d >= released] + ([released] if died_in_custody else [])
        rel = release_of(enc)
        release_rows.append(
            release_row(
                release_id=str(enc["id"]),
                patient=patient,
                booked_at=stay.booked,
                released_at=released,
                organization=_ref(enc.get("serviceProvider")),
                facility=_facility(enc),
                intercept=next((i for sr in mine if (i := _intercept(sr)) is not None), None),
                planned=rel.planned if rel else True,
                sex=person.get("gender"),
                birth_date=birth,
                at_risk=any(inside(p) for p in positive),
                screened_at=next((s for s in screenings if inside(s)), None),
                educated=any(inside(e) for e in educations),
                naloxone_in_hand=any(inside(k) for k in kits),
                first_contact_at=first_contact,
                treatment_started_at=started,
                engaged=engaged,
                deceased_at=min(deaths) if deaths else None,
                rebooked_at=next_booking,
            )
        )
        for sr in mine:
            accepted_at, performer, latest_status = None, None, sr.get("status")
            latest: tuple[datetime, dict[str, Any]] | None = None
            for task in tasks_by_sr.get(str(sr["id"]), []):
                history = versions.get(str(task["id"]), [])
                for updated, body in history:
                    if body.get("status") in ACCEPTED_OR_BEYOND:
                        code, at = _milestone(body)
                        when = at if code == "accepted" and at is not None else updated
                        if accepted_at is None or when < accepted_at:
                            accepted_at, performer = when, _ref(body.get("owner"))
                        break
                if history and (latest is None or history[-1][0] > latest[0]):
                    latest = history[-1]
            if latest is not None:
                latest_status = latest[1].get("status")
                performer = performer or _ref(latest[1].get("owner"))
            performers = [_ref(p) for p in sr.get("performer", []) or []]
            referral_rows.append(
                referral_row(
                    referral_id=str(sr["id"]),
                    release_id=str(enc["id"]),
                    patient=patient,
                    released_at=released,
                    category=category_of(sr),
                    intercept=_intercept(sr),
                    requester=_ref(sr.get("requester")),
                    performer=performer or next((p for p in performers if p), None),
                    accepted_at=accepted_at,
                    status=str(latest_status or "unknown"),
                )
            )
    return release_rows, referral_rows


async def refresh_patient(conn: AsyncConnection, patient: str) -> None:
    """Recompute one person's release and referral rows (in the caller's transaction)."""
    releases, referrals = await compute_patient(conn, patient)
    with_referral_flags(releases, referrals)
    # Rows the person no longer has go; the others are replaced in place (an upsert: two
    # writes about one person at once must not both insert the same release).
    await conn.execute(
        delete(measure_referral).where(
            measure_referral.c.patient == patient,
            measure_referral.c.referral_id.not_in([r["referral_id"] for r in referrals]),
        )
    )
    await conn.execute(
        delete(measure_release).where(
            measure_release.c.patient == patient,
            measure_release.c.release_id.not_in([r["release_id"] for r in releases]),
        )
    )
    await upsert(conn, measure_release, releases, "release_id")
    await upsert(conn, measure_referral, referrals, "referral_id")


async def compute_event(
    conn: AsyncConnection, resource_type: str, body: dict[str, Any] | None, version_id: int
) -> dict[str, Any] | None:
    """The ``measure_event`` row of a kit record or overdose response (None: not one)."""
    if not body:
        return None
    kind, when, quantity = None, None, 1.0
    if resource_type in ("MedicationDispense", "SupplyDelivery"):
        parts = oend_facts.kit_parts(body)
        if body.get("status") == "completed" and await oend_facts.Medications(conn).is_naloxone(
            parts
        ):
            kind, when = "kit", _instant(parts.when)
            value = (
                (parts.quantity or {}).get("value") if isinstance(parts.quantity, dict) else None
            )
            quantity = float(value) if isinstance(value, int | float) else 1.0
    elif resource_type == "Observation":
        is_response = any(
            isinstance(c, dict)
            and c.get("system") == oend.OEND_SYSTEM
            and c.get("code") == "overdose-response"
            for c in (body.get("code") or {}).get("coding", []) or []
        )
        outcome = _codes(body.get("valueCodeableConcept"))
        if is_response and body.get("status") in FINAL and outcome & oend.ALIVE_OUTCOMES:
            kind = "reversal"
            when = _instant(body.get("effectiveDateTime")) or _instant(
                (body.get("effectivePeriod") or {}).get("start")
            )
    if kind is None or when is None:
        return None
    creator = await repo.index_value(
        conn, resource_type, str(body["id"]), version_id, CREATOR_PARAM
    )
    return event_row(
        event_id=f"{resource_type}/{body['id']}",
        kind=kind,
        occurred_at=when,
        organization=creator,
        facility=oend_facts.facility_of(body),
        intercept=oend_facts.intercept_of(body),
        quantity=quantity,
    )


async def refresh_event(
    conn: AsyncConnection,
    resource_type: str,
    resource_id: str,
    body: dict[str, Any] | None,
    version_id: int,
) -> None:
    row = await compute_event(conn, resource_type, body, version_id)
    if row is None:
        await conn.execute(
            delete(measure_event).where(
                measure_event.c.event_id == f"{resource_type}/{resource_id}"
            )
        )
    else:
        await upsert(conn, measure_event, [row], "event_id")


# --- the write rule -----------------------------------------------------------------------------


async def _patient_facts(event: WrittenEvent) -> None:
    if event.stored.resource_type == "Observation" and not _may_matter(event):
        return
    for patient in sorted(patients_of(event.body) | patients_of(event.previous_body)):
        await refresh_patient(event.conn, patient)


def _may_matter(event: WrittenEvent) -> bool:
    """Observations count only as screening results (interpreted ones)."""
    return any(
        body and (body.get("interpretation") or body.get("valueCodeableConcept"))
        for body in (event.body, event.previous_body)
    )


async def _event_facts(event: WrittenEvent) -> None:
    await refresh_event(
        event.conn,
        event.stored.resource_type,
        event.stored.id,
        event.body,
        event.stored.version_id,
    )


def register(rules: RuleSet) -> None:
    for resource_type in (*PATIENT_TYPES, "Patient"):
        rules.on_written(resource_type, _patient_facts)
    for resource_type in EVENT_TYPES:
        rules.on_written(resource_type, _event_facts)


# --- rebuild ---------------------------------------------------------------------------------


async def rebuild(engine: AsyncEngine, *, batch: int = 200) -> dict[str, int]:
    """Recompute every fact (after the migration, or after a definitions change), ``batch``
    people or records per transaction."""
    async with write_transaction(engine) as conn:
        for table in (measure_referral, measure_release, measure_event):
            await conn.execute(delete(table))
        people = [
            str(v)
            for (v,) in (
                await conn.execute(
                    select(search_index.c.value)
                    .where(
                        search_index.c.resource_type == "Encounter",
                        search_index.c.param == "patient",
                    )
                    .distinct()
                )
            ).all()
            if v
        ]
        records = [
            (str(t), str(i))
            for t, i in (
                await conn.execute(
                    select(resource_t.c.resource_type, resource_t.c.id).where(
                        resource_t.c.resource_type.in_(EVENT_TYPES),
                        resource_t.c.deleted.is_(False),
                    )
                )
            ).all()
        ]
    for i in range(0, len(people), batch):
        async with write_transaction(engine) as conn:
            for patient in people[i : i + batch]:
                await refresh_patient(conn, patient)
    events = 0
    for i in range(0, len(records), batch):
        async with write_transaction(engine) as conn:
            for rtype, rid in records[i : i + batch]:
                stored = await repo.get_current(conn, rtype, rid)
                if stored is None or stored.raw is None:
                    continue
                row = await compute_event(conn, rtype, orjson.loads(stored.raw), stored.version_id)
                if row is not None:
                    events += 1
                    await bulk_insert(conn, events=[row])
    async with write_transaction(engine) as conn:
        releases = len((await conn.execute(select(measure_release.c.release_id))).all())
        referrals = len((await conn.execute(select(measure_referral.c.referral_id))).all())
    return {"people": len(people), "releases": releases, "referrals": referrals, "events": events}
