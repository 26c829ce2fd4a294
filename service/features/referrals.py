"""Warm-handoff referrals: the Task state machine on every write path, the ServiceRequest
following its Tasks, and the JMS use cases (open, view, list, cancel, change release, re-refer).

A referral is one ServiceRequest (what is authorized, for whom, the release window) and one
Task per receiving organization asked to fulfil it (a rejected Task can be followed by a new
Task to another organization on the same ServiceRequest).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.referral import (
    OPEN,
    TRANSITIONS,
    Problem,
    check_content,
    check_new_referral_task,
    check_transition,
    is_referral_task,
)
from service.errors import (
    BusinessRuleError,
    ForbiddenError,
    Issue,
    ResourceNotFoundError,
    ServiceError,
)
from service.features.appointments import MILESTONE_AT_EXTENSION, appointments_of
from service.features.people import SID_BASE, Person, booking_system, match_or_create_patient
from service.fhir import codes
from service.fhir.custody_codes import RELEASE_PLANNING_EXTENSION, RELEASED_AT_EXTENSION
from service.fhir.dates import format_instant, shifted
from service.fhir.resource import now_ms
from service.search.execute import CURRENT_COLS, run_search
from service.search.query import parse_search
from service.storage import repository as repo
from service.storage.db import read_connection, write_transaction
from service.storage.repository import StoredResource
from service.telemetry import traced_workflow
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.access import ACTOR_PARAM
from service.workflows.context import WorkflowContext
from service.workflows.disclosure import disclose_all
from service.workflows.rules import RuleSet, WriteEvent, WrittenEvent

RELEASE_LOCATION_EXTENSION = f"{codes.HANDOFF}/StructureDefinition/release-location"
FACILITY_EXTENSION = f"{codes.HANDOFF}/StructureDefinition/referring-facility"
_ONE_MS = timedelta(milliseconds=1)
# Referrals read per search page while building the worklist (all pages are read).
WORKLIST_PAGE_SIZE = 500
CONTACT_PROHIBITED = {
    "coding": [{"system": codes.SDOHCC_TEMP, "code": "contacting-subject-prohibited"}],
    "text": "Do not contact the person directly; coordinate through the referring facility",
}


def _raise(problems: list[Problem]) -> None:
    if not problems:
        return
    issues = [
        Issue(
            "error",
            "forbidden" if p.kind == "forbidden" else "business-rule",
            p.message,
            (p.expression,),
        )
        for p in problems
    ]
    error_type = (
        ForbiddenError if any(p.kind == "forbidden" for p in problems) else BusinessRuleError
    )
    raise error_type(problems[0].message, issues=issues)


def _party(ctx: WorkflowContext, old: dict[str, Any], new: dict[str, Any]) -> str:
    org = ctx.organization
    owner = (old.get("owner") or {}).get("reference")
    requester = (old.get("requester") or {}).get("reference")
    if org is not None and org == requester == owner:
        # A self-referral (e.g. a jail's own reentry program): the move says which party acts.
        move = (str(old.get("status")), str(new.get("status")))
        return TRANSITIONS.get(move, "owner" if move[0] == move[1] else "requester")
    if org is not None and org == requester:
        return "requester"
    if org is not None and org == owner:
        return "owner"
    # An open Task with no owner is claimed by the organization that accepts it.
    if owner is None and org is not None and (new.get("owner") or {}).get("reference") == org:
        return "owner"
    return "other"


# --- write rules -------------------------------------------------------------------------------


async def _task_rules(event: WriteEvent) -> None:
    new, old = event.body, event.current_body
    if new is None:
        return
    if not is_referral_task(new) and (old is None or not is_referral_task(old)):
        return
    privileged = event.ctx.principal is None or event.ctx.principal.is_admin
    coded = _code_problems(new, old)
    if old is None:
        problems = check_new_referral_task(new) + check_content(new, changed_status=False)
        focus = (new.get("focus") or {}).get("reference", "")
        if not problems and focus.startswith("ServiceRequest/"):
            sr_id = focus.split("/", 1)[1]
            sr = await repo.get_current(event.conn, "ServiceRequest", sr_id)
            if sr is not None and not privileged:
                access = event.ctx.write_access or event.ctx.access
                seen = await repo.which_pass(
                    event.conn,
                    [("ServiceRequest", sr_id)],
                    lambda rtype: access(rtype, CURRENT_COLS),
                )
                sr = sr if seen.get(("ServiceRequest", sr_id)) else None
            if sr is None or sr.raw is None:
                # Worded as access.linked_targets words a ServiceRequest the writer may not
                # see: the answer must not tell the two apart.
                problems.append(
                    Problem(
                        "rule",
                        f"Task.focus refers to {focus}, which is not known to this server",
                        "Task.focus",
                    )
                )
            elif _intercept_of(orjson.loads(sr.raw)) is None:
                problems.append(
                    Problem(
                        "rule",
                        f"The referral {focus} records no Sequential Intercept Model intercept "
                        f"(extension {codes.SIM_EXTENSION}, a code 0-5 of {codes.SIM_SYSTEM}): "
                        "every referral says at which intercept it is made",
                        "Task.focus",
                    )
                )
        _raise(problems + coded)
        return
    if privileged:
        _raise(check_content(new, changed_status=old.get("status") != new.get("status")) + coded)
        return
    party = _party(event.ctx, old, new)
    problems = check_transition(old, new, party)  # type: ignore[arg-type]
    if party == "requester":
        owner_before = (old.get("owner") or {}).get("reference")
        owner_after = (new.get("owner") or {}).get("reference")
        if owner_before != owner_after and old.get("status") not in ("requested", "draft"):
            problems.append(
                Problem(
                    "rule",
                    "The owner of an accepted referral cannot be changed; cancel it and re-refer",
                    "Task.owner",
                )
            )
    _raise(problems + coded)


# Milestones that close a referral: only a closed Task (completed or failed) carries them.
_CLOSING_MILESTONES = frozenset(
    code for code in codes.BUSINESS_STATUSES if code.startswith("closed-")
)


def _code_problems(new: dict[str, Any], old: dict[str, Any] | None) -> list[Problem]:
    """Handoff's own CodeSystems are required bindings on a referral Task: a code of ours must
    be one we publish, and a milestone must fit the status."""
    problems = []
    milestones = [
        c.get("code")
        for c in (new.get("businessStatus") or {}).get("coding", [])
        if isinstance(c, dict) and c.get("system") == codes.BUSINESS_STATUS_SYSTEM
    ]
    for code in milestones:
        if code not in codes.BUSINESS_STATUSES:
            problems.append(
                Problem(
                    "rule",
                    f"'{code}' is not a warm-handoff milestone of {codes.BUSINESS_STATUS_SYSTEM}; "
                    f"use one of: {', '.join(codes.BUSINESS_STATUSES)}",
                    "Task.businessStatus",
                )
            )
    changed = old is None or (
        old.get("businessStatus") != new.get("businessStatus")
        or old.get("status") != new.get("status")
    )
    closing = [c for c in milestones if c in _CLOSING_MILESTONES]
    if changed and closing and new.get("status") not in ("completed", "failed"):
        problems.append(
            Problem(
                "rule",
                f"The milestone '{closing[0]}' closes the referral: the Task must be completed or "
                f"failed with it, not {new.get('status')}",
                "Task.businessStatus",
            )
        )
    for coding in (new.get("statusReason") or {}).get("coding", []):
        if not isinstance(coding, dict) or coding.get("system") != codes.STATUS_REASON_SYSTEM:
            continue
        if coding.get("code") not in codes.STATUS_REASONS:
            problems.append(
                Problem(
                    "rule",
                    f"'{coding.get('code')}' is not a reason of {codes.STATUS_REASON_SYSTEM}; "
                    f"use one of: {', '.join(codes.STATUS_REASONS)}",
                    "Task.statusReason",
                )
            )
    return problems


def _intercept_of(sr: dict[str, Any]) -> int | None:
    """The referral's SIM intercept (0-5), or None where it records none (or an unknown one)."""
    value = _extension(sr, codes.SIM_EXTENSION)
    if not isinstance(value, dict) or value.get("system") != codes.SIM_SYSTEM:
        return None
    code = value.get("code")
    if not isinstance(code, str) or not code.isascii() or not code.isdigit():
        return None
    return int(code) if int(code) in codes.SIM_INTERCEPTS else None


def _is_referral_request(sr: dict[str, Any]) -> bool:
    return any(
        isinstance(c, dict) and c.get("system") == codes.SNOMED and c.get("code") == "3457005"
        for category in sr.get("category", [])
        if isinstance(category, dict)
        for c in category.get("coding", [])
    )


async def _service_request_rules(event: WriteEvent) -> None:
    """A referral (ServiceRequest category "Patient referral") records its intercept on every
    path, and only the referring organization changes it (the receiving organization reports
    through its Task)."""
    new, old = event.body, event.current_body
    if new is None or not (_is_referral_request(new) or (old and _is_referral_request(old))):
        return
    problems = []
    if _intercept_of(new) is None:
        problems.append(
            Problem(
                "rule",
                "A referral records the Sequential Intercept Model intercept at which it is made: "
                f"extension {codes.SIM_EXTENSION} with valueCoding {codes.SIM_SYSTEM} code 0-5",
                "ServiceRequest.extension",
            )
        )
    for detail in new.get("orderDetail", []):
        for coding in detail.get("coding", []) if isinstance(detail, dict) else []:
            if (
                isinstance(coding, dict)
                and coding.get("system") == codes.SERVICE_SYSTEM
                and coding.get("code") not in codes.SERVICES
            ):
                problems.append(
                    Problem(
                        "rule",
                        f"'{coding.get('code')}' is not a service of {codes.SERVICE_SYSTEM}; use "
                        f"one of: {', '.join(codes.SERVICES)}",
                        "ServiceRequest.orderDetail",
                    )
                )
    principal = event.ctx.principal
    if old is not None and principal is not None and not principal.is_admin:
        requester = (old.get("requester") or {}).get("reference")
        if event.ctx.organization != requester:
            problems.append(
                Problem(
                    "forbidden",
                    "Only the referring organization changes a referral's ServiceRequest; the "
                    "receiving organization reports progress on its Task (status, "
                    "businessStatus, output, note)",
                    "ServiceRequest",
                )
            )
    _raise(problems)


async def _service_request_follows_task(event: WrittenEvent) -> None:
    """completed Task -> ServiceRequest completed; cancelled (no other open Task) -> revoked."""
    task = event.body
    if task is None or not is_referral_task(task):
        return
    before = (event.previous_body or {}).get("status")
    status = task.get("status")
    if status == before or status not in ("completed", "cancelled", "entered-in-error"):
        return
    focus = (task.get("focus") or {}).get("reference", "")
    if not focus.startswith("ServiceRequest/"):
        return
    sr_id = focus.split("/", 1)[1]
    current = await repo.get_current(event.conn, "ServiceRequest", sr_id, for_update=True)
    if current is None or current.raw is None:
        return
    sr = orjson.loads(current.raw)
    if sr.get("status") != "active":
        return
    if status != "completed":
        others = await _tasks_for(event.conn, event.ctx, sr_id, internal=True)
        if any(t["id"] != event.stored.id and t.get("status") in OPEN for t in others):
            return
    sr["status"] = "completed" if status == "completed" else "revoked"
    internal = dataclasses.replace(event.ctx, principal=None, on_behalf_of=None)
    await wf.update_in(
        event.conn, internal, "ServiceRequest", sr_id, sr, if_match=current.version_id
    )


def register(rules: RuleSet) -> None:
    rules.on_write("Task", _task_rules)
    rules.on_write("ServiceRequest", _service_request_rules)
    rules.on_written("Task", _service_request_follows_task)


# --- reading referrals -------------------------------------------------------------------------


async def _tasks_for(
    conn: AsyncConnection, ctx: WorkflowContext, sr_id: str, *, internal: bool = False
) -> list[dict[str, Any]]:
    return (await _tasks_by_referral(conn, ctx, [sr_id], internal=internal))[sr_id]


async def _tasks_by_referral(
    conn: AsyncConnection, ctx: WorkflowContext, sr_ids: list[str], *, internal: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Each referral's Tasks the caller may see, as it may see them (workflows.disclosure),
    oldest first: one search for all the referrals (a worklist page asked one per referral).
    ``internal``: every Task as stored, for the server's own rules (nothing leaves)."""
    out: dict[str, list[dict[str, Any]]] = {sr_id: [] for sr_id in sr_ids}
    if not sr_ids:
        return out
    focus = ",".join(f"ServiceRequest/{sr_id}" for sr_id in sr_ids)
    request = parse_search(
        "Task", [("focus", focus)], strict=True, default_count=1000, max_count=1000
    )
    while True:
        if internal:
            page = await run_search(conn, request, base_url=ctx.base_url)
            shown_tasks = page.matches
        else:
            page = await run_search(conn, request, access=ctx.access, base_url=ctx.base_url)
            shown_tasks = await disclose_all(conn, ctx, page.matches)
        for shown in shown_tasks:
            if shown.raw is None:
                continue
            task = orjson.loads(shown.raw)  # every view keeps focus (workflows.disclosure)
            focus = str((task.get("focus") or {}).get("reference", ""))
            sr_id = focus.removeprefix("ServiceRequest/")
            if sr_id in out:
                out[sr_id].append(task)
        if page.next_page is None:
            break
        request.page = page.next_page
    for tasks in out.values():
        tasks.sort(key=lambda t: (t.get("authoredOn", ""), t["meta"]["lastUpdated"]))
    return out


async def _shown_by_id(
    conn: AsyncConnection, ctx: WorkflowContext, resource_type: str, ids: set[str]
) -> dict[str, dict[str, Any]]:
    """The resources of ``ids`` the caller may see, as it may see them (access filter, then
    the disclosure policy, recorded as any read is): one search per worklist page."""
    out: dict[str, dict[str, Any]] = {}
    wanted = sorted(i for i in ids if i)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        request = parse_search(
            resource_type,
            [("_id", ",".join(chunk))],
            strict=True,
            default_count=len(chunk),
            max_count=1000,
        )
        page = await run_search(conn, request, access=ctx.access, base_url=ctx.base_url)
        for shown in await disclose_all(conn, ctx, page.matches):
            if shown.raw is not None:
                out[shown.id] = orjson.loads(shown.raw)
    return out


def _worklist_details(
    view: dict[str, Any],
    patients: dict[str, dict[str, Any]],
    organizations: dict[str, dict[str, Any]],
    locations: dict[str, dict[str, Any]],
    organization: str | None,
) -> None:
    """What a jail's staff reads on a worklist line beside the ids: the person's name and
    booking number (as this organization recorded it), the receiving organization's name and
    the referring facility's name."""
    patient = patients.get(view["patient_id"])
    name: dict[str, Any] = next(iter((patient or {}).get("name", [])), {})
    booking = booking_system(organization) if organization else None
    view["person"] = (
        {
            "family_name": name.get("family"),
            "given_names": list(name.get("given", [])),
            "booking_number": next(
                (
                    i.get("value")
                    for i in patient.get("identifier", [])
                    if booking is not None and i.get("system") == booking
                ),
                None,
            ),
        }
        if patient is not None
        else None
    )
    owner = str(view.get("owner") or "")
    org = organizations.get(owner.removeprefix("Organization/")) if owner else None
    view["receiving_organization_name"] = (org or {}).get("name")
    ftype, _, fid = str(view.get("facility") or "").partition("/")
    facility = (locations if ftype == "Location" else organizations).get(fid) if fid else None
    view["facility_name"] = (facility or {}).get("name")


def _coding(concept: Any, system: str) -> dict[str, Any] | None:
    for coding in (concept or {}).get("coding", []) if isinstance(concept, dict) else []:
        if coding.get("system") == system:
            return {"code": coding.get("code"), "display": coding.get("display")}
    return None


def _extension(resource: dict[str, Any], url: str) -> Any:
    for ext in resource.get("extension", []):
        if ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


# A ServiceRequest written through FHIR may carry our extensions with any valid R4 value (a
# valueString, a code that is not a number): the view shows what it can read of them.
def _reference(value: Any) -> str | None:
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) else None


async def _timeline(
    conn: AsyncConnection, ctx: WorkflowContext, tasks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    events = []
    for task in tasks:
        versions = await repo.instance_history(
            conn, "Task", task["id"], before_version=None, limit=1000
        )
        oldest_first = [entry.stored for entry in reversed(versions)]
        # Who acted, and the caller's view of each version: a query each for all versions.
        actors = await repo.index_values(
            conn, "Task", [(s.id, s.version_id) for s in oldest_first], ACTOR_PARAM
        )
        shown_versions = await disclose_all(conn, ctx, oldest_first, record=False)
        previous: dict[str, Any] | None = None
        for stored, shown in zip(oldest_first, shown_versions, strict=True):
            if shown.raw is None:
                continue
            body = orjson.loads(shown.raw)
            changed = previous is None or any(
                body.get(k) != previous.get(k)
                for k in ("status", "businessStatus", "statusReason", "output", "owner")
            )
            if changed:
                events.append(_event(body, stored, by=actors[(stored.id, stored.version_id)]))
            previous = body
    return sorted(events, key=lambda e: (e["at"], e["version"]))


def _event(body: dict[str, Any], version: StoredResource, *, by: str | None) -> dict[str, Any]:
    """One timeline event: a version of a Task that changed its status or milestone."""
    return {
        "at": format_instant(version.last_updated),
        "event": "task",
        "task_id": version.id,
        "version": version.version_id,
        "status": body.get("status"),
        "business_status": _coding(body.get("businessStatus"), codes.BUSINESS_STATUS_SYSTEM)
        or (
            {"display": body["businessStatus"].get("text")} if body.get("businessStatus") else None
        ),
        "reason": (body.get("statusReason") or {}).get("text"),
        "owner": (body.get("owner") or {}).get("reference"),
        "by": by,
        "occurred_at": _extension(body.get("businessStatus") or {}, MILESTONE_AT_EXTENSION),
    }


def _outputs(task: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for output in task.get("output", []):
        item: dict[str, Any] = {
            "type": (output.get("type") or {}).get("text") or _first_code(output.get("type"))
        }
        if "valueReference" in output:
            item["reference"] = output["valueReference"].get("reference")
        elif "valueCodeableConcept" in output:
            item["activity"] = _first_code(output["valueCodeableConcept"])
        out.append(item)
    return out


def _first_code(concept: Any) -> str | None:
    codings = (concept or {}).get("coding", []) if isinstance(concept, dict) else []
    return codings[0].get("code") if codings else None


async def referral_view(
    conn: AsyncConnection, ctx: WorkflowContext, sr_id: str, *, with_timeline: bool = True
) -> dict[str, Any]:
    stored = await wf.read_in(conn, ctx, "ServiceRequest", sr_id)
    sr = orjson.loads(stored.raw or "{}")
    tasks = await _tasks_for(conn, ctx, sr_id)
    view = _view(ctx, sr_id, sr, tasks)
    if with_timeline:
        view["timeline"] = _with_release(view, await _timeline(conn, ctx, tasks))
        view["appointments"] = await appointments_of(conn, ctx, sr_id)
    return view


def _with_release(view: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The timeline with the recorded release of the referral's custody stay in its place."""
    released_at = view["release"]["released_at"]
    if not isinstance(released_at, str):
        return events
    release = {
        "at": released_at,
        "event": "released",
        "task_id": None,
        "version": 0,
        "status": None,
        "business_status": None,
        "reason": "planned release" if view["release"]["planned"] else "unplanned release",
        "owner": None,
        "by": view["custody_stay"],
        "occurred_at": released_at,
    }
    instant = datetime.fromisoformat(released_at.replace("Z", "+00:00"))
    before = [
        e for e in events if datetime.fromisoformat(e["at"].replace("Z", "+00:00")) <= instant
    ]
    return [*before, release, *events[len(before) :]]


def _opened_view(ctx: WorkflowContext, sr: StoredResource, task: StoredResource) -> dict[str, Any]:
    """The view of a referral just opened, from what was written (no re-read): the referring
    organization wrote both resources, so it sees them whole, and the timeline has one event."""
    task_body = orjson.loads(task.raw or "{}")
    view = _view(ctx, sr.id, orjson.loads(sr.raw or "{}"), [task_body])
    view["timeline"] = [_event(task_body, task, by=ctx.organization)]
    view["appointments"] = []
    return view


def _view(
    ctx: WorkflowContext, sr_id: str, sr: dict[str, Any], tasks: list[dict[str, Any]]
) -> dict[str, Any]:
    current = tasks[-1] if tasks else None
    period = sr.get("occurrencePeriod") or {}
    services = [
        c.get("code")
        for c in sr.get("orderDetail", [])
        for c in c.get("coding", [])
        if c.get("system") == codes.SERVICE_SYSTEM
    ]
    identifier = next(
        (
            i.get("value")
            for i in sr.get("identifier", [])
            if "/referral-id" in str(i.get("system"))
        ),
        None,
    )
    view: dict[str, Any] = {
        "referral_id": sr_id,
        "jms_referral_id": identifier,
        "patient_id": str((sr.get("subject") or {}).get("reference", "")).removeprefix("Patient/"),
        "service_request_status": sr.get("status"),
        "status": current.get("status") if current else None,
        "business_status": (
            _coding(current.get("businessStatus"), codes.BUSINESS_STATUS_SYSTEM)
            if current
            else None
        ),
        "status_reason": ((current or {}).get("statusReason") or {}).get("text"),
        "owner": ((current or {}).get("owner") or {}).get("reference"),
        "task_id": current["id"] if current else None,
        "tasks": [
            {
                "task_id": t["id"],
                "owner": (t.get("owner") or {}).get("reference"),
                "status": t.get("status"),
            }
            for t in tasks
        ],
        "services": services,
        "priority": sr.get("priority"),
        "facility": _reference(_extension(sr, FACILITY_EXTENSION)),
        "intercept": _intercept_of(sr),
        "release": {
            "expected_at": period.get("start"),
            "window_end": period.get("end"),
            "location": _extension(sr, RELEASE_LOCATION_EXTENSION),
            "released_at": _extension(sr, RELEASED_AT_EXTENSION),
            "planned": (
                _extension(sr, RELEASE_PLANNING_EXTENSION) != "unplanned"
                if _extension(sr, RELEASED_AT_EXTENSION)
                else None
            ),
        },
        "custody_stay": _reference(sr.get("encounter")),
        "outcomes": _outputs(current) if current else [],
        "links": {
            "self": f"{ctx.base_url.removesuffix('/fhir')}/v1/referrals/{sr_id}",
            "service_request": f"{ctx.base_url}/ServiceRequest/{sr_id}",
            "task": f"{ctx.base_url}/Task/{current['id']}" if current else None,
        },
    }
    return view


@traced_workflow(
    "workflow.get_referral", resource_type="ServiceRequest", interaction="read", id_position=1
)
async def get_referral(ctx: WorkflowContext, sr_id: str) -> dict[str, Any]:
    async with read_connection(ctx.engine) as conn:
        return await referral_view(conn, ctx, sr_id)


def worklist_search(
    requester: str | None, release_from: datetime | None, release_to: datetime | None
) -> list[tuple[str, str]]:
    """The ServiceRequest search behind the worklist: the requester's referrals whose expected
    release (``occurrencePeriod.start``) lies in [``release_from``, ``release_to``]."""
    params: list[tuple[str, str]] = [("_count", str(WORKLIST_PAGE_SIZE))]
    if requester:
        params.append(("requester", requester))
    # Not ``ge``/``le``: FHIR compares Periods as ranges, and a release window without an end
    # is open-ended, so ``ge<from>`` matched every such referral ever released. ``sa`` and ``le``
    # bound the start alone; ``sa`` ("starts after") takes the millisecond before ``from``.
    if release_from:
        start_floor = release_from.replace(microsecond=release_from.microsecond // 1000 * 1000)
        params.append(("occurrence", f"sa{format_instant(shifted(start_floor, -_ONE_MS))}"))
    if release_to:
        params.append(("occurrence", f"le{format_instant(release_to)}"))
    return params


@traced_workflow("workflow.list_referrals", resource_type="ServiceRequest", interaction="search")
async def list_referrals(
    ctx: WorkflowContext,
    *,
    facility: str | None,
    release_from: datetime | None,
    release_to: datetime | None,
    statuses: set[str] | None,
    capped: bool = True,
    released: bool = False,
) -> list[dict[str, Any]]:
    """The referring organization's worklist, soonest release first: referrals whose expected
    release (``occurrencePeriod.start``) lies in [``release_from``, ``release_to``], every page of
    them (a large jail releases hundreds a day), up to ``worklist_max_referrals``: a window
    holding more is refused, not cut short, so that no referral silently drops off a list.
    A referral whose custody stay records the release leaves it (``released``: kept)."""
    params = worklist_search(ctx.organization, release_from, release_to)
    request = wf.parse_search_params(ctx, "ServiceRequest", params, strict=True)
    limit = ctx.settings.worklist_max_referrals
    out = []
    read = 0
    async with read_connection(ctx.engine) as conn:
        async for page in wf.search_pages(conn, ctx, request):
            read += len(page.matches)
            if capped and read > limit:
                message = (
                    f"More than {limit} referrals have a release in this window: narrow it with "
                    "release_from and release_to (e.g. the next 72 hours)"
                )
                raise BusinessRuleError(
                    message,
                    issues=[Issue("error", "too-costly", message, ("release_from", "release_to"))],
                )
            referrals = []
            for match in page.matches:
                sr = orjson.loads(match.raw or "{}")
                if facility is None or (_reference(_extension(sr, FACILITY_EXTENSION)) == facility):
                    referrals.append((match.id, sr))
            tasks = await _tasks_by_referral(conn, ctx, [sr_id for sr_id, _ in referrals])
            views = []
            for sr_id, sr in referrals:
                view = _view(ctx, sr_id, sr, tasks[sr_id])
                if statuses is not None and (view["status"] or "none") not in statuses:
                    continue
                if view["release"]["released_at"] and not released:
                    continue  # the person is out: the release worklist is done with them
                views.append(view)
            patients = await _shown_by_id(conn, ctx, "Patient", {v["patient_id"] for v in views})
            owners = {
                str(v["owner"]).removeprefix("Organization/")
                for v in views
                if str(v.get("owner") or "").startswith("Organization/")
            }
            facilities: dict[str, set[str]] = {"Location": set(), "Organization": set()}
            for view in views:
                ftype, _, fid = str(view.get("facility") or "").partition("/")
                if ftype in facilities:
                    facilities[ftype].add(fid)
            organizations = await _shown_by_id(
                conn, ctx, "Organization", owners | facilities["Organization"]
            )
            locations = await _shown_by_id(conn, ctx, "Location", facilities["Location"])
            for view in views:
                _worklist_details(view, patients, organizations, locations, ctx.organization)
            out.extend(views)
    return sorted(out, key=worklist_key)


def worklist_key(view: dict[str, Any]) -> tuple[str, str]:
    """A worklist's order: soonest expected release first, then by referral id (a total order,
    so a page boundary never splits or repeats a referral)."""
    return (view["release"]["expected_at"] or "", view["referral_id"])


def encode_worklist_cursor(view: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(worklist_key(view)))).decode().rstrip("=")


def worklist_page(
    views: list[dict[str, Any]], *, after: str | None, limit: int | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The ``limit`` referrals of a sorted worklist that follow the cursor ``after`` (from
    ``encode_worklist_cursor``), and the cursor of the next page (None: the last). A cursor is
    a position, not an offset: referrals added or gone between pages shift nothing."""
    if after is not None:
        try:
            padded = after + "=" * (-len(after) % 4)
            expected, referral_id = orjson.loads(base64.urlsafe_b64decode(padded))
            position = (str(expected), str(referral_id))
        except (ValueError, TypeError, binascii.Error):
            message = "after is not a worklist cursor: follow the next link a worklist returned"
            raise BusinessRuleError(
                message, issues=[Issue("error", "value", message, ("after",))]
            ) from None
        views = [v for v in views if worklist_key(v) > position]
    if limit is None or len(views) <= limit:
        return views, None
    page = views[:limit]
    return page, encode_worklist_cursor(page[-1])


# --- opening and changing referrals ------------------------------------------------------------


@dataclass
class ReferralInput:
    jms_referral_id: str | None
    person: Person
    referred_by_name: str
    referred_by_role: str
    referred_by_id: str | None
    facility: str | None
    intercept: int
    program_type: str
    release_at: datetime | None  # None: a community referral (intercepts 0, 1, 5)
    release_window_end: datetime | None
    release_location: str | None
    services: list[str]
    receiver: str  # Organization/<id> or HealthcareService/<id>
    priority: str
    notes: str | None
    contact_directly: bool
    supporting_info: list[str] = field(default_factory=list)
    # The custody stay the referral belongs to (Encounter/<id>), its person (Patient id) and
    # its recorded release (instant, planned|unplanned), when there is one.
    encounter: str | None = None
    patient_id: str | None = None
    released: tuple[str, str] | None = None
    # Recent screenings of the person the referral carries (found by the server, not named by
    # the caller, so not checked against what the caller may read).
    carried_info: list[str] = field(default_factory=list)


# Resolves what a referral's custody stay decides (its person, expected or recorded release,
# the screenings it carries) inside the referral's transaction.
StayResolver = Callable[[AsyncConnection, WorkflowContext, ReferralInput], Awaitable[ReferralInput]]


def referral_id_system(organization: str) -> str:
    return f"{SID_BASE}/{organization.split('/', 1)[-1]}/referral-id"


async def _check_references(
    conn: AsyncConnection, ctx: WorkflowContext, data: ReferralInput
) -> tuple[str, str | None]:
    """Resolve the receiver to (owner Organization, HealthcareService or None); report every
    unknown reference at once."""
    issues: list[Issue] = []
    owner, service = data.receiver, None
    rtype, _, rid = data.receiver.partition("/")
    stored = await repo.get_current(conn, rtype, rid)
    if stored is None or stored.deleted or stored.raw is None:
        issues.append(
            Issue(
                "error",
                "not-found",
                f"{data.receiver} is not known here",
                ("receiving_organization",),
            )
        )
    elif rtype == "HealthcareService":
        service = data.receiver
        provided_by = (orjson.loads(stored.raw).get("providedBy") or {}).get("reference")
        if not provided_by:
            issues.append(
                Issue(
                    "error",
                    "business-rule",
                    f"{data.receiver} names no providing organization",
                    ("receiving_service",),
                )
            )
        owner = provided_by or ""
    if data.facility:
        ftype, _, fid = data.facility.partition("/")
        if not await repo.resource_exists(conn, ftype, fid):
            issues.append(
                Issue("error", "not-found", f"{data.facility} is not known here", ("facility",))
            )
    for i, ref in enumerate(data.supporting_info):
        stype, _, sid = ref.partition("/")
        try:
            await wf.read_in(conn, ctx, stype, sid)
        except (ResourceNotFoundError, BusinessRuleError, ForbiddenError):
            issues.append(
                Issue(
                    "error",
                    "not-found",
                    f"{ref} is not known here (or not yours)",
                    (f"supporting_info[{i}]",),
                )
            )
        except ServiceError:  # e.g. deleted (410); a database failure stays a 500, not a 422
            issues.append(
                Issue(
                    "error",
                    "invalid",
                    f"{ref} is not a reference this server holds",
                    (f"supporting_info[{i}]",),
                )
            )
    if issues:
        raise BusinessRuleError(issues[0].diagnostics, issues=issues)
    return owner, service


def _service_request(
    data: ReferralInput, *, organization: str, patient_id: str, service: str | None, owner: str
) -> dict[str, Any]:
    primary = codes.SERVICES[data.services[0]]
    categories: list[dict[str, Any]] = [{"coding": [codes.CATEGORY_REFERRAL]}]
    if any(codes.SERVICES[s].social for s in data.services):
        categories.append({"coding": [codes.CATEGORY_SOCIAL]})
    order_detail: list[dict[str, Any]] = [
        {
            "coding": [
                {"system": codes.SERVICE_SYSTEM, "code": s, "display": codes.SERVICES[s].display}
            ]
        }
        for s in data.services
    ]
    if not data.contact_directly:
        order_detail.append(CONTACT_PROHIBITED)
    period: dict[str, str] = {}
    if data.release_at is not None:
        period["start"] = data.release_at.isoformat()
        if data.release_window_end:
            period["end"] = data.release_window_end.isoformat()
    extensions: list[dict[str, Any]] = [
        codes.intercept_extension(data.intercept),
        {
            "url": codes.PROGRAM_EXTENSION,
            "valueCoding": {
                "system": codes.PROGRAM_SYSTEM,
                "code": data.program_type,
                "display": codes.PROGRAM_TYPES[data.program_type],
            },
        },
    ]
    if data.facility:
        extensions.append(
            {"url": FACILITY_EXTENSION, "valueReference": {"reference": data.facility}}
        )
    if data.release_location:
        extensions.append({"url": RELEASE_LOCATION_EXTENSION, "valueString": data.release_location})
    if data.released is not None:
        extensions.append({"url": RELEASED_AT_EXTENSION, "valueDateTime": data.released[0]})
        extensions.append({"url": RELEASE_PLANNING_EXTENSION, "valueCode": data.released[1]})
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "extension": extensions,
        "status": "active",
        "intent": "order",
        "category": categories,
        "priority": data.priority,
        "code": {
            "coding": [
                {"system": codes.SNOMED, "code": primary.snomed, "display": primary.snomed_display},
                {
                    "system": codes.SERVICE_SYSTEM,
                    "code": data.services[0],
                    "display": primary.display,
                },
            ],
            "text": primary.display,
        },
        "orderDetail": order_detail,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": format_instant(now_ms()),
        "requester": {"reference": organization},
        "performer": [{"reference": owner}] + ([{"reference": service}] if service else []),
        "reasonCode": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/sid/icd-10-cm",
                        "code": "Z65.2",
                        "display": "Problems related to release from prison",
                    }
                ]
            }
        ],
    }
    if period:
        sr["occurrencePeriod"] = period
    if data.encounter:
        sr["encounter"] = {"reference": data.encounter}
    if data.jms_referral_id:
        sr["identifier"] = [
            {"system": referral_id_system(organization), "value": data.jms_referral_id}
        ]
    supporting = list(dict.fromkeys([*data.supporting_info, *data.carried_info]))
    if supporting:
        sr["supportingInfo"] = [{"reference": r} for r in supporting]
    if data.notes:
        sr["note"] = [{"text": data.notes}]
    return sr


def _task(
    data: ReferralInput | None,
    *,
    sr: dict[str, Any],
    sr_id: str,
    owner: str,
    organization: str,
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "resourceType": "Task",
        "extension": [e for e in sr.get("extension", []) if e.get("url") == codes.SIM_EXTENSION],
        "status": "requested",
        "businessStatus": codes.business_status("referral-sent"),
        "intent": "order",
        "priority": sr.get("priority", "routine"),
        "code": {"coding": [{"system": codes.TASK_CODE_SYSTEM, "code": "fulfill"}]},
        "description": sr.get("code", {}).get("text"),
        "focus": {"reference": f"ServiceRequest/{sr_id}"},
        "for": sr["subject"],
        "authoredOn": format_instant(now_ms()),
        "requester": {"reference": organization},
        "owner": {"reference": owner},
    }
    if sr.get("occurrencePeriod"):
        task["restriction"] = {"period": sr["occurrencePeriod"]}
    if sr.get("identifier"):
        task["identifier"] = sr["identifier"]
    if data is not None and data.notes:
        task["note"] = [{"text": data.notes}]
    return task


@traced_workflow("workflow.open_referral", resource_type="ServiceRequest", interaction="create")
async def open_referral(
    ctx: WorkflowContext,
    data: ReferralInput,
    *,
    idempotency_key: str | None,
    fingerprint: str,
    resolve_stay: StayResolver | None = None,
) -> tuple[int, dict[str, Any]]:
    assert ctx.principal is not None
    organization = ctx.organization
    if organization is None:
        raise ForbiddenError("Only a client acting for an organization can refer")

    async def create(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        if data.jms_referral_id:
            # The JMS's own referral id is a business identifier: the same id is the same referral.
            system = referral_id_system(organization)
            await repo.lock_key(conn, f"referral:{system}|{data.jms_referral_id}")
            existing = await wf.find_by_identifier(
                conn, ctx, "ServiceRequest", system, data.jms_referral_id
            )
            if existing:
                return 200, await referral_view(conn, ctx, existing[0].id)
        resolved = data if resolve_stay is None else await resolve_stay(conn, ctx, data)
        owner, service = await _check_references(conn, ctx, resolved)
        patient_id = (
            resolved.patient_id or (await match_or_create_patient(conn, ctx, resolved.person))[0]
        )
        sr = _service_request(
            resolved, organization=organization, patient_id=patient_id, service=service, owner=owner
        )
        sr_result = await wf.create_in(conn, ctx, sr)
        task = _task(
            resolved, sr=sr, sr_id=sr_result.stored.id, owner=owner, organization=organization
        )
        task_result = await wf.create_in(conn, ctx, task)
        body = _opened_view(ctx, sr_result.stored, task_result.stored)
        return 201, body

    return await idempotency.run_once(
        ctx, key=idempotency_key, fingerprint=fingerprint, work=create
    )


async def _current_task(conn: AsyncConnection, ctx: WorkflowContext, sr_id: str) -> dict[str, Any]:
    await wf.read_in(conn, ctx, "ServiceRequest", sr_id)
    tasks = await _tasks_for(conn, ctx, sr_id)
    if not tasks:
        raise BusinessRuleError("This referral has no Task")
    return tasks[-1]


async def _locked_latest(conn: AsyncConnection, resource_type: str, found: dict[str, Any]) -> Any:
    """``found`` (as a search saw it) at its latest version, locked until the transaction ends:
    a provider's update committed since the search then cannot turn the change into a 412.

    Lock order, for every writer: Tasks first, then their ServiceRequest, as a provider's Task
    update and the rule that makes the ServiceRequest follow it take them (the other order
    could deadlock with them)."""
    locked = await repo.get_current(conn, resource_type, found["id"], for_update=True)
    return orjson.loads(locked.raw) if locked is not None and locked.raw else found


@traced_workflow(
    "workflow.cancel_referral", resource_type="ServiceRequest", interaction="update", id_position=1
)
async def cancel_referral(ctx: WorkflowContext, sr_id: str, *, reason: str) -> dict[str, Any]:
    async with write_transaction(ctx.engine) as conn:
        task = await _locked_latest(conn, "Task", await _current_task(conn, ctx, sr_id))
        if task.get("status") == "cancelled":  # a retry (the answer was lost): already done
            return await referral_view(conn, ctx, sr_id)
        if task.get("status") not in OPEN:
            raise BusinessRuleError(
                f"The referral is already {task.get('status')}; "
                "only an open referral can be cancelled"
            )
        task["status"] = "cancelled"
        task["statusReason"] = {"text": reason}
        await wf.update_in(
            conn, ctx, "Task", task["id"], task, if_match=int(task["meta"]["versionId"])
        )
        return await referral_view(conn, ctx, sr_id)


@traced_workflow(
    "workflow.change_release", resource_type="ServiceRequest", interaction="update", id_position=1
)
async def change_release(
    ctx: WorkflowContext,
    sr_id: str,
    *,
    release_at: datetime,
    window_end: datetime | None,
    location: str | None,
) -> dict[str, Any]:
    async with write_transaction(ctx.engine) as conn:
        await wf.read_in(conn, ctx, "ServiceRequest", sr_id)  # 404 unless visible
        open_tasks = [
            task
            for found in await _tasks_for(conn, ctx, sr_id)
            if found.get("status") in OPEN
            and (task := await _locked_latest(conn, "Task", found)).get("status") in OPEN
        ]
        sr = await _locked_latest(conn, "ServiceRequest", {"id": sr_id})
        if sr.get("status") != "active":
            raise BusinessRuleError(
                f"The referral is {sr.get('status')}; its release date is final"
            )
        before = dict(sr)  # the changes below replace elements, never edit them in place
        period: dict[str, str] = {"start": release_at.isoformat()}
        if window_end:
            period["end"] = window_end.isoformat()
        sr["occurrencePeriod"] = period
        if location is not None:
            sr["extension"] = [
                e for e in sr.get("extension", []) if e.get("url") != RELEASE_LOCATION_EXTENSION
            ]
            sr["extension"].append({"url": RELEASE_LOCATION_EXTENSION, "valueString": location})
        # Only what changed gets a new version (a JMS resends the release it already sent).
        if sr != before:
            await wf.update_in(
                conn, ctx, "ServiceRequest", sr_id, sr, if_match=int(sr["meta"]["versionId"])
            )
        for task in open_tasks:
            if (task.get("restriction") or {}).get("period") == period:
                continue
            task["restriction"] = {**(task.get("restriction") or {}), "period": period}
            await wf.update_in(
                conn, ctx, "Task", task["id"], task, if_match=int(task["meta"]["versionId"])
            )
        return await referral_view(conn, ctx, sr_id)


@traced_workflow(
    "workflow.re_refer", resource_type="ServiceRequest", interaction="update", id_position=1
)
async def re_refer(ctx: WorkflowContext, sr_id: str, *, receiver: str) -> dict[str, Any]:
    """After a rejection (or failure), ask another organization: a new Task, same request."""
    organization = ctx.organization
    if organization is None:
        raise ForbiddenError("Only a client acting for an organization can refer")
    async with write_transaction(ctx.engine) as conn:
        # Locked, then read: a second re-refer (a double click) waits, then finds the first
        # one's Task, instead of failing on the ServiceRequest's version.
        stored = await wf.read_in(conn, ctx, "ServiceRequest", sr_id, lock=True)
        sr = orjson.loads(stored.raw or "{}")
        if (sr.get("requester") or {}).get("reference") != organization:
            raise ForbiddenError("Only the referring organization can re-refer")
        tasks = await _tasks_for(conn, ctx, sr_id)
        data = dataclasses.replace(_EMPTY, receiver=receiver)
        owner, service = await _check_references(conn, ctx, data)
        if any(t.get("status") in OPEN for t in tasks):
            latest = tasks[-1]
            if len(tasks) > 1 and ((latest.get("owner") or {}).get("reference")) == owner:
                # A retry of this re-referral (its answer was lost, or a double click that
                # waited for the first): already done.
                return await referral_view(conn, ctx, sr_id)
            raise BusinessRuleError(
                "The referral still has an open Task; "
                "re-refer after it is rejected, failed or cancelled"
            )
        if sr.get("status") != "active":
            raise BusinessRuleError(f"The referral is {sr.get('status')}")
        sr["performer"] = [{"reference": owner}] + ([{"reference": service}] if service else [])
        await wf.update_in(
            conn, ctx, "ServiceRequest", sr_id, sr, if_match=int(sr["meta"]["versionId"])
        )
        await wf.create_in(
            conn, ctx, _task(None, sr=sr, sr_id=sr_id, owner=owner, organization=organization)
        )
        return await referral_view(conn, ctx, sr_id)


_EMPTY = ReferralInput(
    jms_referral_id=None,
    person=Person(None, None, "", [], "", ""),
    referred_by_name="",
    referred_by_role="",
    referred_by_id=None,
    facility=None,
    intercept=0,
    program_type="other",
    release_at=datetime.now(UTC),
    release_window_end=None,
    release_location=None,
    services=[],
    receiver="",
    priority="routine",
    notes=None,
    contact_directly=False,
)


@traced_workflow("workflow.escalations", resource_type="ServiceRequest", interaction="search")
async def escalations(
    ctx: WorkflowContext, *, within: timedelta, no_shows: bool = False
) -> list[dict[str, Any]]:
    """Referrals whose release is near (or passed within the window) and not yet accepted,
    and referrals escalated when their person was released unplanned or early (the Task's
    ``released-unplanned`` milestone, while it is still not accepted).

    ``no_shows``: also the taken referrals whose person missed the first appointment (the
    Task's ``no-show`` milestone, while nothing attended or closed it). That milestone is the
    receiving program's record (42 CFR Part 2): the search over it finds a referral only where
    the caller may see the milestone (its author, or under the program's consent)."""
    now = datetime.now(UTC)
    views = await list_referrals(
        ctx,
        facility=None,
        release_from=now - timedelta(hours=24),
        release_to=now + within,
        statuses=None,
        capped=False,  # at most 15 days ahead: bounded by the API
        released=True,
    )
    listed = {v["referral_id"] for v in views}
    searches = [("released-unplanned", "requested,draft")]
    if no_shows:
        searches.append(("no-show", "accepted,in-progress,on-hold"))
    missed: set[str] = set()
    async with read_connection(ctx.engine) as conn:
        for milestone, statuses in searches:
            params = [
                ("business-status", f"{codes.BUSINESS_STATUS_SYSTEM}|{milestone}"),
                ("status", statuses),
                ("_count", str(WORKLIST_PAGE_SIZE)),
            ]
            if ctx.organization:
                params.append(("requester", ctx.organization))
            request = wf.parse_search_params(ctx, "Task", params, strict=True)
            async for page in wf.search_pages(conn, ctx, request):
                for match in page.matches:
                    body = orjson.loads(match.raw or "{}")
                    focus = str((body.get("focus") or {}).get("reference"))
                    sr_id = focus.removeprefix("ServiceRequest/")
                    if not focus.startswith("ServiceRequest/"):
                        continue
                    if milestone == "no-show":
                        missed.add(sr_id)
                    if sr_id not in listed:
                        listed.add(sr_id)
                        views.append(await referral_view(conn, ctx, sr_id, with_timeline=False))
    return [
        v
        for v in views
        if v["service_request_status"] == "active"
        and (
            v["status"] in (None, "requested", "rejected", "failed", "draft")
            or (v["referral_id"] in missed and _milestone_code(v) == "no-show")
        )
    ]


def _milestone_code(view: dict[str, Any]) -> str | None:
    business = view.get("business_status")
    return str(business.get("code")) if isinstance(business, dict) else None
