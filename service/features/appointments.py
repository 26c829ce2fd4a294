"""First appointments after a referral: FHIR ``Appointment`` (R4) ``basedOn`` the referral's
ServiceRequest, booked and kept up to date by the receiving organization, through FHIR or
``/v1/referrals/{id}/appointments``.

The referral follows its appointments (one rule on every write path, in the write's
transaction):

* booked (or rescheduled): the Task's milestone becomes ``intake-scheduled``;
* fulfilled (attended): ``first-appointment-attended``, with the appointment's start as the
  milestone's clinical time (``businessStatus`` extension ``milestone-occurred-at``: measures
  read it, not when it was recorded), the appointment in ``Task.output``, and an accepted Task
  ``in-progress``;
* noshow: the ``no-show`` milestone and an escalation: the Task's priority becomes ``stat``
  (a Task change, so the SDOH Task topic's subscribers, the jail and the program, are told);
* cancelled: back to ``accepted`` while nothing else is booked.

Attended or missed before the person's recorded release (``released-at`` on the
ServiceRequest, ``features.custody.handoff.record_release``), or starting before it, is
refused. An appointment is the receiving organization's record: at an SUD program it is a
Part 2 record (labelled from the referral), shown whole to others only under that
organization's consent (``workflows.disclosure``).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any, NoReturn

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.referral import is_referral_task
from service.errors import BusinessRuleError, ForbiddenError, Issue, ResourceNotFoundError
from service.fhir import codes
from service.fhir.custody_codes import release_of_referral
from service.search.execute import CURRENT_COLS, allow_all, run_search
from service.search.query import parse_search
from service.storage import repository as repo
from service.storage.db import read_connection, write_transaction
from service.telemetry import traced_workflow
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.access import require_scope
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet, WriteEvent, WrittenEvent

MILESTONE_AT_EXTENSION = f"{codes.HANDOFF}/StructureDefinition/milestone-occurred-at"
APPOINTMENT_OUTPUT = "first-appointment"
# Statuses that say the person came or did not: only after the release.
_AFTER_RELEASE = frozenset({"arrived", "checked-in", "fulfilled", "noshow"})
# A Task the receiving organization has taken on (it books appointments for these).
_TAKEN = frozenset({"accepted", "in-progress", "on-hold"})
DEFAULT_LENGTH = timedelta(minutes=60)


def _problem(message: str, expression: str, *, forbidden: bool = False) -> NoReturn:
    issue = Issue("error", "forbidden" if forbidden else "business-rule", message, (expression,))
    if forbidden:
        raise ForbiddenError(message, issues=[issue])
    raise BusinessRuleError(message, issues=[issue])


def _ref(value: Any) -> str:
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) else ""


def referral_of(body: dict[str, Any]) -> str | None:
    """The referral (ServiceRequest id) an appointment is ``basedOn``, or None."""
    refs = [_ref(b) for b in body.get("basedOn", []) if _ref(b).startswith("ServiceRequest/")]
    return refs[0].removeprefix("ServiceRequest/") if len(refs) == 1 else None


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _tasks(conn: AsyncConnection, sr_id: str) -> list[dict[str, Any]]:
    """The referral's Tasks as stored (for the server's own rules: nothing leaves)."""
    request = parse_search(
        "Task",
        [("focus", f"ServiceRequest/{sr_id}")],
        strict=True,
        default_count=100,
        max_count=100,
    )
    page = await run_search(conn, request, access=allow_all)
    tasks = [orjson.loads(m.raw) for m in page.matches if m.raw is not None]
    return sorted(tasks, key=lambda t: (t.get("authoredOn", ""), t["meta"]["lastUpdated"]))


def _receiving_task(tasks: list[dict[str, Any]], org: str | None) -> dict[str, Any] | None:
    """The referral Task the organization has taken on (``org`` None: the latest taken one)."""
    taken = [
        t
        for t in tasks
        if is_referral_task(t)
        and t.get("status") in _TAKEN
        and (org is None or _ref(t.get("owner")) == org)
    ]
    return taken[-1] if taken else None


# --- the rule on every write path ----------------------------------------------------------


async def _appointment_rules(event: WriteEvent) -> None:
    new, old = event.body, event.current_body
    if new is None:
        return
    sr_id = referral_of(new)
    if sr_id is None:
        _problem(
            "An appointment is booked for one referral: basedOn names exactly one "
            "ServiceRequest (the referral's)",
            "Appointment.basedOn",
        )
    if old is not None and referral_of(old) != sr_id:
        _problem("An appointment stays with the referral it was booked for", "Appointment.basedOn")
    ctx = event.ctx
    privileged = ctx.principal is None or ctx.principal.is_admin
    sr_row = await repo.get_current(event.conn, "ServiceRequest", sr_id)
    if sr_row is not None and not privileged:
        access = ctx.write_access or ctx.access
        seen = await repo.which_pass(
            event.conn, [("ServiceRequest", sr_id)], lambda rtype: access(rtype, CURRENT_COLS)
        )
        sr_row = sr_row if seen.get(("ServiceRequest", sr_id)) else None
    if sr_row is None or sr_row.raw is None or sr_row.deleted:
        _problem(
            f"Appointment.basedOn refers to ServiceRequest/{sr_id}, which is not known to this "
            "server",
            "Appointment.basedOn",
        )
    sr = orjson.loads(sr_row.raw)
    patient = _ref(sr.get("subject"))
    actors = {_ref(p.get("actor")) for p in new.get("participant", []) if isinstance(p, dict)}
    if patient and patient not in actors:
        _problem(
            f"The referral is for {patient}: name them as a participant (participant.actor)",
            "Appointment.participant",
        )
    if (
        not privileged
        and _receiving_task(await _tasks(event.conn, sr_id), ctx.organization) is None
    ):
        _problem(
            "Only the receiving organization, once it has accepted the referral, books and "
            "updates its appointments",
            "Appointment",
            forbidden=True,
        )
    status = str(new.get("status"))
    if status in _AFTER_RELEASE and (old is None or old.get("status") != status):
        _check_after_release(sr, new)


def _check_after_release(sr: dict[str, Any], appointment: dict[str, Any]) -> None:
    """Attended or missed only once the person is out: the custody stay records the release,
    and the appointment starts after it."""
    stay = _ref(sr.get("encounter"))
    released = release_of_referral(sr)
    what = "attended" if appointment.get("status") != "noshow" else "missed (noshow)"
    if stay and released is None:
        expected = (sr.get("occurrencePeriod") or {}).get("start")
        _problem(
            f"The appointment cannot be marked {what} before the person's release: the custody "
            f"stay of this referral ({stay}) records no release yet"
            + (f" (expected {expected})" if expected else "")
            + "; mark it once the jail has recorded the release",
            "Appointment.status",
        )
    start, released_at = _instant(appointment.get("start")), None
    if released is not None:
        released_at = _instant(released[0])
    if start is not None and released_at is not None and start < released_at:
        _problem(
            f"The appointment starts at {appointment.get('start')}, before the person's "
            f"recorded release at {released[0] if released else ''}: it cannot have been "
            f"{what}; reschedule it (start after the release) first",
            "Appointment.start",
        )


# --- the referral follows -------------------------------------------------------------------


def _milestone(task: dict[str, Any]) -> str | None:
    for coding in (task.get("businessStatus") or {}).get("coding", []):
        if isinstance(coding, dict) and coding.get("system") == codes.BUSINESS_STATUS_SYSTEM:
            return str(coding.get("code"))
    return None


def _with_milestone(task: dict[str, Any], code: str, occurred: str | None = None) -> None:
    status = codes.business_status(code)
    if occurred:
        status["extension"] = [{"url": MILESTONE_AT_EXTENSION, "valueDateTime": occurred}]
    task["businessStatus"] = status


async def _others_booked(conn: AsyncConnection, sr_id: str, appointment_id: str) -> bool:
    request = parse_search(
        "Appointment",
        [("based-on", f"ServiceRequest/{sr_id}"), ("status", "booked")],
        strict=True,
        default_count=10,
        max_count=10,
    )
    page = await run_search(conn, request, access=allow_all)
    return any(m.id != appointment_id for m in page.matches)


async def _referral_follows(event: WrittenEvent) -> None:
    new, old = event.body, event.previous_body
    if new is None:
        return
    sr_id = referral_of(new)
    if sr_id is None:
        return
    status, before = str(new.get("status")), (old or {}).get("status")
    rescheduled = old is not None and (old.get("start"), old.get("end")) != (
        new.get("start"),
        new.get("end"),
    )
    if status == before and not (status == "booked" and rescheduled):
        return
    tasks = await _tasks(event.conn, sr_id)
    org = event.ctx.organization
    privileged = event.ctx.principal is None or event.ctx.principal.is_admin
    task = _receiving_task(tasks, None if privileged else org)
    if task is None:
        return
    locked = await repo.get_current(event.conn, "Task", task["id"], for_update=True)
    if locked is None or locked.raw is None:
        return
    task = orjson.loads(locked.raw)
    changed = dict(task)
    milestone = _milestone(task)
    if status == "booked" and milestone != "first-appointment-attended":
        _with_milestone(changed, "intake-scheduled")
    elif status == "fulfilled" and milestone != "first-appointment-attended":
        _with_milestone(changed, "first-appointment-attended", new.get("start"))
        reference = f"Appointment/{event.stored.id}"
        if not any(_ref(o.get("valueReference")) == reference for o in task.get("output", [])):
            changed["output"] = [
                *task.get("output", []),
                {
                    "type": {
                        "coding": [{"system": codes.OUTPUT_SYSTEM, "code": APPOINTMENT_OUTPUT}],
                        "text": "First appointment attended",
                    },
                    "valueReference": {"reference": reference},
                },
            ]
        if task.get("status") == "accepted":
            changed["status"] = "in-progress"
    elif status == "noshow" and milestone != "first-appointment-attended":
        _with_milestone(changed, "no-show")
        changed["priority"] = "stat"
    elif (
        status == "cancelled"
        and milestone == "intake-scheduled"
        and not await _others_booked(event.conn, sr_id, event.stored.id)
    ):
        _with_milestone(changed, "accepted")
    if changed == task:
        return
    # Recorded for the organization whose appointment moved the referral (as a release's
    # escalation is recorded for the jail): the server's write, not an edit of the Task.
    # Not among the versions the request names (``written``): its answer shows the
    # appointment, not the Task (an Idempotency-Key replay shows again what was shown).
    internal = dataclasses.replace(
        event.ctx,
        principal=None,
        on_behalf_of=org,
        search_access=None,
        write_access=None,
        written=[],
    )
    await wf.update_in(
        event.conn, internal, "Task", task["id"], changed, if_match=locked.version_id
    )


def register(rules: RuleSet) -> None:
    rules.on_write("Appointment", _appointment_rules)
    rules.on_written("Appointment", _referral_follows)


# --- /v1 use cases ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Booking:
    start: datetime
    end: datetime | None
    location: str | None  # Location/<id>
    practitioner: str | None  # Practitioner/<id> or PractitionerRole/<id>
    description: str | None


def appointment_view(body: dict[str, Any]) -> dict[str, Any]:
    """An appointment as plain JSON: what the caller may see of it (a redacted one says only
    that one is scheduled)."""
    withheld = any(
        isinstance(t, dict) and t.get("code") == "REDACTED"
        for t in (body.get("meta") or {}).get("tag", [])
    )
    location = practitioner = location_name = None
    for p in body.get("participant", []):
        actor = p.get("actor") if isinstance(p, dict) else None
        reference = _ref(actor)
        if reference.startswith("Location/"):
            location, location_name = reference, (actor or {}).get("display")
        elif reference.startswith(("Practitioner/", "PractitionerRole/")):
            practitioner = reference
    return {
        "appointment_id": body.get("id"),
        "referral_id": referral_of(body),
        "status": body.get("status"),
        "start": body.get("start"),
        "end": body.get("end"),
        "location": location,
        "location_name": location_name,
        "practitioner": practitioner,
        "description": body.get("description"),
        "cancellation_reason": (body.get("cancelationReason") or {}).get("text"),
        "details_withheld": withheld,
    }


async def appointments_of(
    conn: AsyncConnection, ctx: WorkflowContext, sr_id: str
) -> list[dict[str, Any]]:
    """The referral's appointments the caller may see, as it may see them, soonest first."""
    if not ctx.principal or not ctx.principal.scopes.allows("Appointment", "s"):
        return []
    request = wf.parse_search_params(
        ctx,
        "Appointment",
        [("based-on", f"ServiceRequest/{sr_id}"), ("_count", "100")],
        strict=True,
    )
    views: list[dict[str, Any]] = []
    async for page in wf.search_pages(conn, ctx, request):
        views.extend(appointment_view(orjson.loads(m.raw)) for m in page.matches if m.raw)
    return sorted(views, key=lambda v: (v["start"] or "", v["appointment_id"] or ""))


async def _referral_patient(
    conn: AsyncConnection, ctx: WorkflowContext, sr_id: str
) -> tuple[dict[str, Any], str]:
    """The referral as stored, if the caller may see it (404 otherwise, as a read would), and
    its person. Only the person is used: nothing of the referral is shown in the answer (a
    receiving organization may see it only redacted), so it is not recorded as disclosed."""
    require_scope(ctx.principal, "ServiceRequest", "r")
    allowed = ctx.access("ServiceRequest", CURRENT_COLS)
    found = (
        await repo.get_current_checked(conn, "ServiceRequest", sr_id, allowed)
        if allowed is not None
        else None
    )
    if found is None or not found[1] or found[0].deleted or found[0].raw is None:
        raise ResourceNotFoundError(f"ServiceRequest/{sr_id} is not known to this server")
    sr = orjson.loads(found[0].raw)
    return sr, _ref(sr.get("subject"))


async def _participants(
    conn: AsyncConnection, ctx: WorkflowContext, patient: str, booking: Booking
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"actor": {"reference": patient}, "status": "accepted"}]
    if booking.location:
        place = await wf.read_in(conn, ctx, "Location", booking.location.split("/", 1)[1])
        name = orjson.loads(place.raw or "{}").get("name")
        actor = {"reference": booking.location, **({"display": name} if name else {})}
        out.append({"actor": actor, "status": "accepted"})
    if booking.practitioner:
        rtype, rid = booking.practitioner.split("/", 1)
        await wf.read_in(conn, ctx, rtype, rid)
        out.append({"actor": {"reference": booking.practitioner}, "status": "accepted"})
    return out


def _period(booking: Booking) -> tuple[str, str]:
    end = booking.end or booking.start + DEFAULT_LENGTH
    if end <= booking.start:
        _problem("end must be after start", "end")
    return booking.start.isoformat(), end.isoformat()


@traced_workflow(
    "workflow.book_appointment", resource_type="Appointment", interaction="create", id_position=1
)
async def book(
    ctx: WorkflowContext,
    sr_id: str,
    booking: Booking,
    *,
    idempotency_key: str | None,
    fingerprint: str,
) -> tuple[int, dict[str, Any]]:
    async def create(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        _, patient = await _referral_patient(conn, ctx, sr_id)
        start, end = _period(booking)
        body: dict[str, Any] = {
            "resourceType": "Appointment",
            "status": "booked",
            "basedOn": [{"reference": f"ServiceRequest/{sr_id}"}],
            "start": start,
            "end": end,
            "participant": await _participants(conn, ctx, patient, booking),
        }
        if booking.description:
            body["description"] = booking.description
        result = await wf.create_in(conn, ctx, body)
        return 201, appointment_view(orjson.loads(result.stored.raw or "{}"))

    return await idempotency.run_once(
        ctx, key=idempotency_key, fingerprint=fingerprint, work=create
    )


async def _locked_appointment(
    conn: AsyncConnection, ctx: WorkflowContext, sr_id: str, appointment_id: str
) -> dict[str, Any]:
    await _referral_patient(conn, ctx, sr_id)
    stored = await wf.read_in(conn, ctx, "Appointment", appointment_id, lock=True)
    body = orjson.loads(stored.raw or "{}")
    if referral_of(body) != sr_id:
        raise ResourceNotFoundError(
            f"Appointment/{appointment_id} is not an appointment of referral {sr_id}"
        )
    return dict(body)


async def _save(
    conn: AsyncConnection, ctx: WorkflowContext, before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    if after == before:  # a retry of a change already made: the appointment as it is
        return appointment_view(before)
    result = await wf.update_in(
        conn, ctx, "Appointment", after["id"], after, if_match=int(after["meta"]["versionId"])
    )
    return appointment_view(orjson.loads(result.stored.raw or "{}"))


@traced_workflow(
    "workflow.reschedule_appointment",
    resource_type="Appointment",
    interaction="update",
    id_position=2,
)
async def reschedule(
    ctx: WorkflowContext, sr_id: str, appointment_id: str, booking: Booking
) -> dict[str, Any]:
    async with write_transaction(ctx.engine) as conn:
        before = await _locked_appointment(conn, ctx, sr_id, appointment_id)
        if before.get("status") not in ("booked", "noshow", "proposed", "pending"):
            _problem(
                f"The appointment is {before.get('status')}: book a new one instead",
                "Appointment.status",
            )
        after = dict(before)
        after["start"], after["end"] = _period(booking)
        after["status"] = "booked"
        if booking.location or booking.practitioner:
            patient = next(
                (
                    _ref(p.get("actor"))
                    for p in before.get("participant", [])
                    if _ref(p.get("actor")).startswith("Patient/")
                ),
                "",
            )
            kept = Booking(
                start=booking.start,
                end=booking.end,
                location=booking.location or appointment_view(before)["location"],
                practitioner=booking.practitioner or appointment_view(before)["practitioner"],
                description=None,
            )
            after["participant"] = await _participants(conn, ctx, patient, kept)
        if booking.description:
            after["description"] = booking.description
        return await _save(conn, ctx, before, after)


_MOVES = {"attended": "fulfilled", "no-show": "noshow", "cancel": "cancelled"}


@traced_workflow(
    "workflow.mark_appointment", resource_type="Appointment", interaction="update", id_position=2
)
async def mark(
    ctx: WorkflowContext, sr_id: str, appointment_id: str, move: str, *, reason: str | None
) -> dict[str, Any]:
    """attended, no-show or cancel; repeating a move answers the appointment as it is."""
    status = _MOVES[move]
    async with write_transaction(ctx.engine) as conn:
        before = await _locked_appointment(conn, ctx, sr_id, appointment_id)
        if before.get("status") == status:
            return appointment_view(before)
        if before.get("status") not in ("booked", "arrived", "checked-in", "pending"):
            _problem(
                f"The appointment is {before.get('status')}; only a booked appointment can be "
                f"marked {move}",
                "Appointment.status",
            )
        after = dict(before)
        after["status"] = status
        if reason and status in ("cancelled", "noshow"):
            after["cancelationReason"] = {"text": reason}
        return await _save(conn, ctx, before, after)


async def list_for_referral(ctx: WorkflowContext, sr_id: str) -> list[dict[str, Any]]:
    async with read_connection(ctx.engine) as conn:
        await _referral_patient(conn, ctx, sr_id)
        return await appointments_of(conn, ctx, sr_id)
