"""Custody stays from the JMS: a booking, changes of its expected release, transfers between
facilities, the release, and corrections of each (including cancelling a booking or a release
entered in error). One custody stay is one Encounter (docs/custody.md has the mapping),
identified by the jail's booking number.

Each use case has an ``*_in`` form working inside a caller's transaction (the HL7 v2 intake
runs several under one message) and a public form with its own transaction.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, Issue, ResourceNotFoundError
from service.features.custody import handoff
from service.features.custody.mapping import (
    expected_release_of,
    facility_reference,
    release_of,
    stay_body,
    stay_view,
)
from service.features.people import Person, booking_system, match_or_create_patient
from service.fhir.custody_codes import (
    EXPECTED_RELEASE_EXTENSION,
    RELEASE_PLANNING_EXTENSION,
    release_type_coding,
)
from service.storage import repository as repo
from service.storage.db import read_connection, write_transaction
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

UNCHANGED: Any = object()


@dataclass
class BookingInput:
    booking_number: str
    person: Person
    facility: str | None  # Location/<id>, or the facility's name
    booked_at: datetime
    expected_release_at: datetime | None


@dataclass
class ReleaseInput:
    released_at: datetime
    planned: bool
    release_type: str  # a code of service.fhir.custody_codes.RELEASE_TYPES
    destination: str | None = None


def _organization(ctx: WorkflowContext) -> str:
    if ctx.organization is None:
        raise BusinessRuleError("Only a client acting for an organization records custody stays")
    return ctx.organization


async def find_stay_in(
    conn: AsyncConnection, ctx: WorkflowContext, booking_number: str, *, lock: bool = False
) -> dict[str, Any] | None:
    """The caller's custody stay with this booking number (as the caller may see it), or None.
    ``lock``: the latest version, locked until the transaction ends."""
    system = booking_system(_organization(ctx))
    found = await wf.find_by_identifier(conn, ctx, "Encounter", system, booking_number)
    if not found:
        return None
    if lock:
        stored = await wf.read_in(conn, ctx, "Encounter", found[0].id, lock=True)
        return dict(orjson.loads(stored.raw or "{}"))
    return dict(orjson.loads(found[0].raw or "{}"))


async def _stay(
    conn: AsyncConnection, ctx: WorkflowContext, booking_number: str, *, lock: bool = True
) -> dict[str, Any]:
    stay = await find_stay_in(conn, ctx, booking_number, lock=lock)
    if stay is None:
        raise ResourceNotFoundError(
            f"No custody stay with booking number {booking_number} is known for "
            f"{ctx.organization}; book it first (POST /v1/bookings)"
        )
    return stay


async def _check_facility(conn: AsyncConnection, facility: str | None, field: str) -> None:
    ref = facility_reference(facility)
    reference = ref.get("reference") if ref else None
    if reference:
        rtype, _, rid = reference.partition("/")
        if not await repo.resource_exists(conn, rtype, rid):
            message = f"{reference} is not known here"
            raise BusinessRuleError(message, issues=[_issue(message, field)])


def _issue(message: str, field: str) -> Issue:
    return Issue("error", "business-rule", message, (field,))


async def _save(
    conn: AsyncConnection, ctx: WorkflowContext, stay: dict[str, Any], before: dict[str, Any]
) -> dict[str, Any]:
    """Write ``stay`` if it changed (a JMS resends what it already sent); the stored body."""
    if stay == before:
        return stay
    result = await wf.update_in(
        conn, ctx, "Encounter", stay["id"], stay, if_match=int(stay["meta"]["versionId"])
    )
    return dict(orjson.loads(result.stored.raw or "{}"))


# --- booking -------------------------------------------------------------------------------------


async def book_in(
    conn: AsyncConnection, ctx: WorkflowContext, data: BookingInput, *, update: bool = False
) -> tuple[int, dict[str, Any]]:
    """(201, stay) for a new booking; (200, stay) for a booking number already recorded (as
    it is, or brought up to date with ``data`` when ``update``: an HL7 A01 sent again)."""
    organization = _organization(ctx)
    system = booking_system(organization)
    await repo.lock_key(conn, f"booking:{system}|{data.booking_number}")
    existing = await find_stay_in(conn, ctx, data.booking_number, lock=True)
    if existing is not None and not update:
        return 200, existing
    await _check_facility(conn, data.facility, "facility")
    person = dataclasses.replace(
        data.person, booking_number=data.person.booking_number or data.booking_number
    )
    patient_id, _ = await match_or_create_patient(conn, ctx, person)
    if existing is not None:
        before = copy.deepcopy(existing)
        stay = stay_body(
            booking_system=system,
            booking_number=data.booking_number,
            patient_id=patient_id,
            organization=organization,
            facility=data.facility,
            booked_at=data.booked_at,
            expected_release_at=data.expected_release_at,
            base=existing,
        )
        saved = await _save(conn, ctx, stay, before)
        await handoff.follow_expected_release(conn, ctx, saved)
        return 200, saved
    stay = stay_body(
        booking_system=system,
        booking_number=data.booking_number,
        patient_id=patient_id,
        organization=organization,
        facility=data.facility,
        booked_at=data.booked_at,
        expected_release_at=data.expected_release_at,
    )
    created = await wf.create_in(conn, ctx, stay)
    return 201, dict(orjson.loads(created.stored.raw or "{}"))


async def book(
    ctx: WorkflowContext, data: BookingInput, *, idempotency_key: str | None, fingerprint: str
) -> tuple[int, dict[str, Any]]:
    async def work(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        status, stay = await book_in(conn, ctx, data)
        return status, await view_in(conn, ctx, stay)

    return await idempotency.run_once(ctx, key=idempotency_key, fingerprint=fingerprint, work=work)


async def change_booking_in(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    booking_number: str,
    *,
    booked_at: datetime | None = None,
    expected_release_at: datetime | None = UNCHANGED,
    facility: str | None = None,
) -> dict[str, Any]:
    """Corrections of a booking: when it began, the facility (a correction, not a transfer),
    and the expected release (``None`` clears it); referrals of the stay follow the release."""
    stay = await _stay(conn, ctx, booking_number)
    _refuse_cancelled(stay)
    before = copy.deepcopy(stay)
    if booked_at is not None:
        start = booked_at.isoformat()
        end = (stay.get("period") or {}).get("end")
        if end and booked_at > datetime.fromisoformat(end):
            raise BusinessRuleError(
                f"booked_at {start} is after the recorded release ({end})",
                expression=["booked_at"],
            )
        stay["period"] = {**(stay.get("period") or {}), "start": start}
        locations = stay.get("location") or []
        if locations:
            first = dict(locations[0])
            first["period"] = {**(first.get("period") or {}), "start": start}
            stay["location"] = [first, *locations[1:]]
    if facility is not None:
        await _check_facility(conn, facility, "facility")
        locations = list(stay.get("location") or [])
        if locations:
            locations[-1] = {**locations[-1], "location": facility_reference(facility)}
            stay["location"] = locations
    if expected_release_at is not UNCHANGED:
        extensions = [
            e for e in stay.get("extension", []) if e.get("url") != EXPECTED_RELEASE_EXTENSION
        ]
        if expected_release_at is not None:
            extensions.append(
                {
                    "url": EXPECTED_RELEASE_EXTENSION,
                    "valueDateTime": expected_release_at.isoformat(),
                }
            )
        if extensions:
            stay["extension"] = extensions
        else:
            stay.pop("extension", None)
    saved = await _save(conn, ctx, stay, before)
    if expected_release_of(saved) != expected_release_of(before):
        await handoff.follow_expected_release(conn, ctx, saved)
    return saved


def _refuse_cancelled(stay: dict[str, Any]) -> None:
    if stay.get("status") == "entered-in-error":
        raise BusinessRuleError(
            "This booking was cancelled (entered in error); book again with a new booking number"
        )


async def cancel_booking_in(
    conn: AsyncConnection, ctx: WorkflowContext, booking_number: str
) -> dict[str, Any]:
    """A booking entered in error (HL7 A11): the stay is marked entered-in-error, kept."""
    stay = await _stay(conn, ctx, booking_number)
    if stay.get("status") == "entered-in-error":
        return stay
    if release_of(stay) is not None:
        raise BusinessRuleError(
            "This custody stay records a release: cancel the release first, then the booking"
        )
    before = copy.deepcopy(stay)
    stay["status"] = "entered-in-error"
    return await _save(conn, ctx, stay, before)


# --- transfer ------------------------------------------------------------------------------------


async def transfer_in(
    conn: AsyncConnection, ctx: WorkflowContext, booking_number: str, *, to: str, at: datetime
) -> dict[str, Any]:
    """A move to another facility during the stay: the current location ends at ``at``."""
    stay = await _stay(conn, ctx, booking_number)
    _refuse_cancelled(stay)
    if release_of(stay) is not None:
        raise BusinessRuleError(
            "This person was released: a transfer after release is a new booking",
            expression=["to_facility"],
        )
    await _check_facility(conn, to, "to_facility")
    before = copy.deepcopy(stay)
    when = at.isoformat()
    locations = [dict(loc) for loc in stay.get("location") or []]
    target = facility_reference(to)
    if locations and locations[-1].get("location") == target:
        return stay  # a resent transfer
    start = (stay.get("period") or {}).get("start", "")
    if at < datetime.fromisoformat(start):
        raise BusinessRuleError(
            f"The transfer time {when} is before the booking ({start})", expression=["at"]
        )
    if locations:
        current = locations[-1]
        current["status"] = "completed"
        current["period"] = {**(current.get("period") or {}), "end": when}
    locations.append({"location": target, "status": "active", "period": {"start": when}})
    stay["location"] = locations
    return await _save(conn, ctx, stay, before)


# --- release -------------------------------------------------------------------------------------


async def release_in(
    conn: AsyncConnection, ctx: WorkflowContext, booking_number: str, data: ReleaseInput
) -> tuple[dict[str, Any], handoff.ReleaseRecorded | None]:
    """Record (or correct) the release; the stay's referrals follow (``handoff``)."""
    stay = await _stay(conn, ctx, booking_number)
    _refuse_cancelled(stay)
    start = (stay.get("period") or {}).get("start", "")
    if start and data.released_at < datetime.fromisoformat(start):
        raise BusinessRuleError(
            f"released_at {data.released_at.isoformat()} is before the booking ({start})",
            expression=["released_at"],
        )
    await _check_facility(conn, data.destination, "destination")
    before = copy.deepcopy(stay)
    when = data.released_at.isoformat()
    stay["status"] = "finished"
    stay["period"] = {**(stay.get("period") or {}), "end": when}
    locations = [dict(loc) for loc in stay.get("location") or []]
    if locations:
        last = locations[-1]
        last["status"] = "completed"
        last["period"] = {**(last.get("period") or {}), "end": when}
        stay["location"] = locations
    hospitalization: dict[str, Any] = {
        "dischargeDisposition": {
            "coding": [release_type_coding(data.release_type)],
            "text": release_type_coding(data.release_type)["display"],
        }
    }
    if data.destination:
        hospitalization["destination"] = facility_reference(data.destination)
    stay["hospitalization"] = hospitalization
    planning = "planned" if data.planned else "unplanned"
    stay["extension"] = [
        e for e in stay.get("extension", []) if e.get("url") != RELEASE_PLANNING_EXTENSION
    ] + [{"url": RELEASE_PLANNING_EXTENSION, "valueCode": planning}]
    saved = await _save(conn, ctx, stay, before)
    if saved is stay and stay == before:
        return saved, None  # resent: already recorded as it is
    return saved, await handoff.record_release(conn, ctx, saved)


async def cancel_release_in(
    conn: AsyncConnection, ctx: WorkflowContext, booking_number: str
) -> dict[str, Any]:
    """A release entered in error (HL7 A13): the person is in custody again, at the facility
    they were released from; the referrals lose the recorded release."""
    stay = await _stay(conn, ctx, booking_number)
    _refuse_cancelled(stay)
    if release_of(stay) is None:
        return stay
    before = copy.deepcopy(stay)
    stay["status"] = "in-progress"
    period = dict(stay.get("period") or {})
    period.pop("end", None)
    stay["period"] = period
    stay.pop("hospitalization", None)
    stay["extension"] = [
        e for e in stay.get("extension", []) if e.get("url") != RELEASE_PLANNING_EXTENSION
    ]
    if not stay["extension"]:
        stay.pop("extension")
    locations = [dict(loc) for loc in stay.get("location") or []]
    if locations:
        last = locations[-1]
        last["status"] = "active"
        last_period = dict(last.get("period") or {})
        last_period.pop("end", None)
        last["period"] = last_period
        stay["location"] = locations
    saved = await _save(conn, ctx, stay, before)
    await handoff.withdraw_release(conn, ctx, saved)
    return saved


# --- views ---------------------------------------------------------------------------------------


async def view_in(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    stay: dict[str, Any],
    recorded: handoff.ReleaseRecorded | None = None,
) -> dict[str, Any]:
    referrals = await handoff.referrals_of_stay(conn, ctx, stay["id"])
    view = stay_view(ctx.base_url, stay, referrals)
    if recorded is not None:
        view["escalations"] = [dataclasses.asdict(e) for e in recorded.escalations]
    return view


async def get_stay(ctx: WorkflowContext, booking_number: str) -> dict[str, Any]:
    async with read_connection(ctx.engine) as conn:
        stay = await _stay(conn, ctx, booking_number, lock=False)
        return await view_in(conn, ctx, stay)


async def change_booking(
    ctx: WorkflowContext,
    booking_number: str,
    *,
    booked_at: datetime | None,
    expected_release_at: datetime | None = UNCHANGED,
    facility: str | None,
) -> dict[str, Any]:
    async with write_transaction(ctx.engine) as conn:
        stay = await change_booking_in(
            conn,
            ctx,
            booking_number,
            booked_at=booked_at,
            expected_release_at=expected_release_at,
            facility=facility,
        )
        return await view_in(conn, ctx, stay)


async def cancel_booking(ctx: WorkflowContext, booking_number: str) -> dict[str, Any]:
    async with write_transaction(ctx.engine) as conn:
        return await view_in(conn, ctx, await cancel_booking_in(conn, ctx, booking_number))


async def transfer(
    ctx: WorkflowContext, booking_number: str, *, to: str, at: datetime
) -> dict[str, Any]:
    async with write_transaction(ctx.engine) as conn:
        return await view_in(conn, ctx, await transfer_in(conn, ctx, booking_number, to=to, at=at))


async def release(ctx: WorkflowContext, booking_number: str, data: ReleaseInput) -> dict[str, Any]:
    async with write_transaction(ctx.engine) as conn:
        stay, recorded = await release_in(conn, ctx, booking_number, data)
        return await view_in(conn, ctx, stay, recorded)


async def cancel_release(ctx: WorkflowContext, booking_number: str) -> dict[str, Any]:
    async with write_transaction(ctx.engine) as conn:
        return await view_in(conn, ctx, await cancel_release_in(conn, ctx, booking_number))
