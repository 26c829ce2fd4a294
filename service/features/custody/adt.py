"""HL7 v2 ADT intake: the custody events a JMS already sends its health vendor, mapped onto
the same use cases as /v1/bookings (docs/custody.md has the field table).

A01 admit (booking), A02 transfer, A03 discharge (release), A08 update, A11 cancel admit,
A13 cancel discharge. Each message is applied in one transaction and answered with an ACK:
AA when applied; AE (with ERR segments) when it was understood but cannot be applied, and
nothing was written; AR when it is not a message this endpoint takes (type, version,
processing id, or not HL7 v2 at all). MSH-10 (message control id) dedupes: the same id
again is answered with the same ACK and writes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import hl7
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ResourceNotFoundError, ServiceError
from service.features.custody import stays
from service.features.custody.handoff import EARLY_RELEASE_MARGIN
from service.features.custody.mapping import expected_release_of
from service.features.people import Person
from service.fhir.custody_codes import RELEASE_TYPES
from service.workflows import idempotency
from service.workflows.context import WorkflowContext

EVENTS = ("A01", "A02", "A03", "A08", "A11", "A13")
_SEX = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
APPLICATION, FACILITY = "HANDOFF", "HANDOFF"


class Rejected(Exception):
    """The message cannot be applied: (ACK code, HL7 table 0357 error code, location, text)."""

    def __init__(self, ack: str, code: str, location: str, text: str) -> None:
        super().__init__(text)
        self.ack, self.code, self.location, self.text = ack, code, location, text


_ERROR_NAMES = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}


@dataclass(frozen=True)
class Answer:
    ack_code: str  # AA, AE or AR
    text: str  # the ACK message, segments separated by CR


def _field(message: hl7.Message, path: str) -> str:
    """A field or component as text ('' when absent), e.g. ``PV1.F3.R1.C4``."""
    try:
        return str(message[path]).strip()
    except (KeyError, IndexError, ValueError):
        return ""


def _instant(message: hl7.Message, path: str, zone: ZoneInfo) -> datetime | None:
    value = _field(message, path)
    if not value:
        return None
    try:
        parsed: datetime | None = hl7.parse_datetime(value)
    except ValueError:
        raise Rejected("AE", "102", path, f"{path} is not an HL7 date/time: {value}") from None
    if parsed is None:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)


def _required(message: hl7.Message, path: str, what: str) -> str:
    value = _field(message, path)
    if not value:
        raise Rejected("AE", "101", path, f"{path} ({what}) is required")
    return value


def _person(message: hl7.Message, booking_number: str) -> Person:
    person_id = _required(message, "PID.F3.R1.C1", "the JMS person id, PID-3")
    family = _required(message, "PID.F5.R1.C1", "family name, PID-5.1")
    given = [g for g in (_field(message, "PID.F5.R1.C2"), _field(message, "PID.F5.R1.C3")) if g]
    if not given:
        raise Rejected("AE", "101", "PID.F5.R1.C2", "PID-5.2 (given name) is required")
    born = _required(message, "PID.F7.R1.C1", "birth date, PID-7")
    if len(born) < 8 or not born[:8].isdigit():
        raise Rejected("AE", "102", "PID.F7", f"PID-7 is not an HL7 date: {born}")
    sex = _SEX.get(_field(message, "PID.F8").upper()[:1], "unknown")
    return Person(
        person_id=person_id,
        booking_number=booking_number,
        family_name=family,
        given_names=given,
        birth_date=f"{born[:4]}-{born[4:6]}-{born[6:8]}",
        sex=sex,
    )


def _facility(message: hl7.Message, field: str) -> str | None:
    """PV1-3 (or PV1-6...): the facility (PL.4), else the point of care (PL.1)."""
    return _field(message, f"{field}.R1.C4") or _field(message, f"{field}.R1.C1") or None


def _event_time(message: hl7.Message, specific: str, zone: ZoneInfo) -> datetime:
    for path in (specific, "EVN.F6", "EVN.F2"):
        found = _instant(message, path, zone)
        if found is not None:
            return found
    raise Rejected("AE", "101", specific, f"{specific} (or EVN-6 / EVN-2) is required")


def _release_type(message: hl7.Message) -> str:
    """PV1-36 (discharge disposition) when it is a Handoff release type, else ``other``."""
    code = _field(message, "PV1.F36.R1.C1").lower()
    return code if code in RELEASE_TYPES else "other"


async def _apply(
    conn: AsyncConnection, ctx: WorkflowContext, message: hl7.Message, event: str
) -> None:
    zone = ZoneInfo(ctx.settings.adt_timezone)
    booking_number = _required(message, "PV1.F19.R1.C1", "the booking number, PV1-19")
    if event in ("A01", "A08"):
        person = _person(message, booking_number)
        expected_release_at = _instant(message, "PV2.F9", zone)
        if event == "A08":
            stay = await stays.find_stay_in(conn, ctx, booking_number)
            if stay is None:
                raise Rejected(
                    "AE", "204", "PV1.F19", f"No custody stay with booking number {booking_number}"
                )
            # Many JMS send PV2 only when they know the date: an A08 without PV2-9 keeps it.
            known = expected_release_of(stay)
            if expected_release_at is None and known:
                expected_release_at = datetime.fromisoformat(known)
        await stays.book_in(
            conn,
            ctx,
            stays.BookingInput(
                booking_number=booking_number,
                person=person,
                facility=_facility(message, "PV1.F3"),
                booked_at=_event_time(message, "PV1.F44", zone),
                expected_release_at=expected_release_at,
            ),
            update=True,
        )
    elif event == "A02":
        to = _facility(message, "PV1.F3")
        if not to:
            raise Rejected("AE", "101", "PV1.F3", "PV1-3 (the new location) is required")
        await stays.transfer_in(
            conn, ctx, booking_number, to=to, at=_event_time(message, "EVN.F6", zone)
        )
    elif event == "A03":
        released_at = _event_time(message, "PV1.F45", zone)
        stay = await stays.find_stay_in(conn, ctx, booking_number)
        expected = expected_release_of(stay) if stay else None
        # ADT has no planned/unplanned: a release with no expected release, or well before
        # it, is one nobody planned for.
        planned = expected is not None and released_at >= (
            datetime.fromisoformat(expected) - EARLY_RELEASE_MARGIN
        )
        await stays.release_in(
            conn,
            ctx,
            booking_number,
            stays.ReleaseInput(
                released_at=released_at,
                planned=planned,
                release_type=_release_type(message),
                destination=_field(message, "PV1.F37.R1.C1") or None,
            ),
        )
    elif event == "A11":
        await stays.cancel_booking_in(conn, ctx, booking_number)
    elif event == "A13":
        await stays.cancel_release_in(conn, ctx, booking_number)


def _ack(message: hl7.Message | None, code: str, control_id: str, errors: list[Rejected]) -> str:
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    ack_id = f"ACK{now}{hashlib.sha256(control_id.encode()).hexdigest()[:6]}"
    if message is not None:
        text = str(
            message.create_ack(
                ack_code=code, message_id=ack_id, application=APPLICATION, facility=FACILITY
            )
        )
        escape = message.escape
    else:
        text = (
            f"MSH|^~\\&|{APPLICATION}|{FACILITY}|||{now}||ACK|{ack_id}|P|2.5.1\r"
            f"MSA|{code}|{control_id}\r"
        )

        def escape(value: str, app_map: Any = None) -> str:
            return value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")

    segments = [s for s in text.split("\r") if s]
    for error in errors:
        location = error.location.replace(".F", "^").replace(".R1.C", "^").split("^")
        segments.append(
            "|".join(
                [
                    "ERR",
                    "",
                    "^".join([*location[:1], "1", *location[1:]]),
                    f"{error.code}^{_ERROR_NAMES.get(error.code, '')}^HL70357",
                    "E",
                    "",
                    "",
                    "",
                    escape(error.text),
                ]
            )
        )
    return "\r".join(segments) + "\r"


def _check_header(message: hl7.Message) -> str:
    """The trigger event, once MSH says this is a message this endpoint takes."""
    kind = _field(message, "MSH.F9.R1.C1")
    event = _field(message, "MSH.F9.R1.C2")
    if kind != "ADT":
        raise Rejected("AR", "200", "MSH.F9", f"MSH-9 message type {kind or '(none)'}: only ADT")
    if event not in EVENTS:
        raise Rejected(
            "AR", "201", "MSH.F9", f"ADT^{event} is not taken here; taken: {', '.join(EVENTS)}"
        )
    version = _field(message, "MSH.F12.R1.C1")
    if not version.startswith("2."):
        raise Rejected("AR", "203", "MSH.F12", f"MSH-12 version {version or '(none)'}: 2.x only")
    processing = _field(message, "MSH.F11.R1.C1")
    if processing not in ("P", "T"):
        raise Rejected(
            "AR", "202", "MSH.F11", f"MSH-11 processing id {processing or '(none)'}: P or T only"
        )
    return event


def parse(raw: str) -> hl7.Message:
    # Segments end with CR; senders that use LF or CRLF are taken too.
    text = raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c ")
    return hl7.parse(text)


async def receive(ctx: WorkflowContext, raw: str) -> Answer:
    """Apply one ADT message; the ACK to answer with."""
    try:
        message = parse(raw)
    except (hl7.ParseException, ValueError, IndexError) as exc:
        error = Rejected("AR", "100", "MSH", f"Not an HL7 v2 message (ER7): {exc}")
        return Answer("AR", _ack(None, "AR", "", [error]))
    control_id = _field(message, "MSH.F10")
    try:
        event = _check_header(message)
        if not control_id:
            raise Rejected("AR", "101", "MSH.F10", "MSH-10 (message control id) is required")
    except Rejected as exc:
        return Answer(exc.ack, _ack(message, exc.ack, control_id, [exc]))
    return await _applied(ctx, message, event, control_id, raw)


async def _applied(
    ctx: WorkflowContext, message: hl7.Message, event: str, control_id: str, raw: str
) -> Answer:
    async def work(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        await _apply(conn, ctx, message, event)
        return 201, {"ack": _ack(message, "AA", control_id, [])}

    try:
        done = await idempotency.run_keyed(
            ctx,
            key=f"hl7v2:{control_id}",
            fingerprint=idempotency.request_hash(raw.replace("\r\n", "\r").replace("\n", "\r")),
            work=work,
        )
    except Rejected as exc:
        return Answer(exc.ack, _ack(message, exc.ack, control_id, [exc]))
    except BusinessRuleError as exc:
        if any("Idempotency-Key" in issue.expression for issue in exc.issues):
            error = Rejected(
                "AE", "205", "MSH.F10", f"MSH-10 {control_id} was used for a different message"
            )
        else:
            error = Rejected("AE", "207", "PV1", exc.diagnostics)
        return Answer("AE", _ack(message, "AE", control_id, [error]))
    except ResourceNotFoundError as exc:
        error = Rejected("AE", "204", "PV1.F19", exc.diagnostics)
        return Answer("AE", _ack(message, "AE", control_id, [error]))
    except ServiceError as exc:
        if exc.status >= 500 or exc.status in (401, 403, 429):
            raise  # the HTTP answer says it (unavailable, not allowed, over its share)
        error = Rejected("AE", "207", "MSH", exc.diagnostics)
        return Answer("AE", _ack(message, "AE", control_id, [error]))
    return Answer("AA", str(done.body["ack"]))
