"""Follow-up contacts after release: when the jail records a person's release, each accepted
peer-support or treatment referral gets the follow-up Tasks its receiving program's plan says
(``fhir.followup_plan``: the program's newest active PlanDefinition, else the built-in one),
owned by that program.

Each follow-up is a Task (code ``follow-up-contact``, status ``ready``, intent ``plan``,
``basedOn`` the referral, due at ``restriction.period.end``) with the identifier
``<referral id>/<action id>`` and an id derived from it, so that a release recorded again,
corrected or sent twice never makes a second set: a corrected release moves the open ones'
due dates, a withdrawn release cancels them, a release recorded again reopens them. The plan
is read when the first set is made (a plan change applies to releases after it). The Tasks are
the program's own records (requester, owner and creator), labelled from the referral (42 CFR
Part 2): the jail does not see them.

A follow-up whose window (``restriction.period.end``) passes while it is still open is marked
overdue by the notification worker's periodic scan (``mark_overdue``): a new Task version with
``businessStatus`` ``overdue`` and priority ``urgent``, once per Task. That change is the
escalation: the SDOH Task topic's subscribers and ``follow-up-overdue`` webhooks of the program
hear of it. The Task stays open, so a later contact that reaches the person still completes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.referral import is_referral_task
from service.fhir import codes
from service.fhir.dates import format_instant
from service.fhir.followup_plan import (
    DEFAULT_PLAN_ID,
    DEFAULT_PLAN_URL,
    FOLLOW_UP_CONTACT,
    FOLLOW_UP_IDENTIFIER,
    FOLLOW_UP_OVERDUE,
    FOLLOW_UP_OVERDUE_DISPLAY,
    FOLLOW_UP_SYSTEM,
    PLAN_EXTENSION,
    USAGE_CONTEXT_TYPE,
    action_due,
    contact_code,
    default_plan,
    is_overdue,
)
from service.search.execute import allow_all, run_search
from service.search.query import parse_search
from service.storage import repository as repo
from service.workflows import resources as wf
from service.workflows.access import CREATOR_PARAM, index_has
from service.workflows.context import WorkflowContext

# Referrals whose receiving program follows the person up after release.
PLANNED_SERVICES = frozenset(
    {"peer-support", "moud-methadone", "moud-buprenorphine", "moud-naltrexone", "sud-treatment"}
)
_TAKEN = frozenset({"accepted", "in-progress", "on-hold"})
_OPEN = frozenset({"ready", "requested", "in-progress", "on-hold"})
_WITHDRAWN = "The release was withdrawn"


def _services(sr: dict[str, Any]) -> set[str]:
    return {
        str(c.get("code"))
        for detail in sr.get("orderDetail", [])
        if isinstance(detail, dict)
        for c in detail.get("coding", [])
        if isinstance(c, dict) and c.get("system") == codes.SERVICE_SYSTEM
    }


def follow_up_id(sr_id: str, action_id: str) -> str:
    """The follow-up Task's id: one per referral and plan action, whatever the retries."""
    return "fu-" + hashlib.sha256(f"{sr_id}/{action_id}".encode()).hexdigest()[:40]


def program_of(plan: dict[str, Any]) -> str | None:
    """The Organization a published plan is for (``useContext`` program), or None."""
    for context in plan.get("useContext", []):
        if not isinstance(context, dict):
            continue
        coding = (context.get("code") or {}) if isinstance(context.get("code"), dict) else {}
        reference = (context.get("valueReference") or {}).get("reference")
        if coding.get("system") == USAGE_CONTEXT_TYPE and coding.get("code") == "program":
            return reference if isinstance(reference, str) else None
    return None


async def _search(
    conn: AsyncConnection, rtype: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    request = parse_search(rtype, params, strict=True, default_count=100, max_count=100)
    page = await run_search(conn, request, access=allow_all)
    return [orjson.loads(m.raw) for m in page.matches if m.raw is not None]


async def plan_for(conn: AsyncConnection, organization: str) -> dict[str, Any]:
    """The program's newest active plan, else the built-in default. Only a plan the program
    published itself counts: one naming it that another organization wrote does not."""
    request = parse_search(
        "PlanDefinition",
        [("context-reference", organization), ("status", "active"), ("_sort", "-_lastUpdated")],
        strict=True,
        default_count=100,
        max_count=100,
    )
    page = await run_search(
        conn,
        request,
        access=lambda rtype, cols: index_has(rtype, cols, CREATOR_PARAM, organization),
    )
    published: list[dict[str, Any]] = [
        orjson.loads(m.raw) for m in page.matches if m.raw is not None
    ]
    for plan in published:
        if program_of(plan) == organization and plan.get("action"):
            return plan
    stored = await repo.get_current(conn, "PlanDefinition", DEFAULT_PLAN_ID)
    return orjson.loads(stored.raw) if stored is not None and stored.raw else default_plan()


def _internal(ctx: WorkflowContext, organization: str) -> WorkflowContext:
    """The program's own records, made by the server because the jail recorded a release: its
    creator is the program (the jail neither sees nor changes them)."""
    return dataclasses.replace(
        ctx,
        principal=None,
        on_behalf_of=organization,
        access=allow_all,
        search_access=None,
        write_access=None,
        written=[],
    )


async def follow_ups_of(conn: AsyncConnection, sr_id: str) -> list[dict[str, Any]]:
    """The referral's follow-up Tasks as stored (the server's own use)."""
    return await _search(
        conn,
        "Task",
        [
            ("based-on", f"ServiceRequest/{sr_id}"),
            ("code", f"{FOLLOW_UP_SYSTEM}|{FOLLOW_UP_CONTACT}"),
        ],
    )


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _due(released: datetime, action: dict[str, Any]) -> str | None:
    after = action_due(action)
    return format_instant(released + after) if after is not None else None


async def apply_at_release(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    sr: dict[str, Any],
    tasks: list[dict[str, Any]],
    released_at: datetime,
) -> list[str]:
    """The follow-up Tasks of one referral at its person's (recorded or corrected) release;
    returns their ids. Nothing for a referral no program has taken on, or for services no
    program follows up."""
    taken = [t for t in tasks if is_referral_task(t) and t.get("status") in _TAKEN]
    owner = ((taken[-1].get("owner") or {}).get("reference")) if taken else None
    if not isinstance(owner, str) or not (_services(sr) & PLANNED_SERVICES):
        return []
    sr_id, patient = sr["id"], (sr.get("subject") or {}).get("reference")
    start = format_instant(released_at)
    existing = await follow_ups_of(conn, sr_id)
    internal = _internal(ctx, owner)
    if existing:  # made at an earlier recording: move them, never add a second set
        for task in existing:
            withdrawn = (task.get("statusReason") or {}).get("text") == _WITHDRAWN
            if task.get("status") not in _OPEN and not withdrawn:
                continue
            changed = dict(task)
            period = dict((task.get("restriction") or {}).get("period") or {})
            if period.get("start") and period.get("end"):
                after = _instant(period["end"]) - _instant(period["start"])
                period["end"] = format_instant(released_at + after)
            period["start"] = start
            changed["restriction"] = {**(task.get("restriction") or {}), "period": period}
            if withdrawn:
                changed["status"] = "ready"
                changed.pop("statusReason", None)
            if is_overdue(changed) and not _window_passed(changed, datetime.now(UTC)):
                changed.pop("businessStatus", None)  # a corrected release moved it ahead
                changed["priority"] = "routine"
            if changed != task:
                await wf.update_in(
                    conn,
                    internal,
                    "Task",
                    task["id"],
                    changed,
                    if_match=int(task["meta"]["versionId"]),
                )
        return sorted(t["id"] for t in existing)
    plan = await plan_for(conn, owner)
    canonical = str(plan.get("url") or DEFAULT_PLAN_URL)
    if plan.get("version"):
        canonical += f"|{plan['version']}"
    made = []
    for action in plan.get("action", []):
        if not isinstance(action, dict) or not action.get("id"):
            continue
        due = _due(released_at, action)
        if due is None:
            continue
        task_id = follow_up_id(sr_id, str(action["id"]))
        body: dict[str, Any] = {
            "resourceType": "Task",
            "id": task_id,
            "extension": [{"url": PLAN_EXTENSION, "valueCanonical": canonical}],
            "identifier": [{"system": FOLLOW_UP_IDENTIFIER, "value": f"{sr_id}/{action['id']}"}],
            "basedOn": [{"reference": f"ServiceRequest/{sr_id}"}],
            "status": "ready",
            "intent": "plan",
            "priority": "routine",
            "code": contact_code(),
            "description": str(action.get("title") or "Follow-up contact"),
            "for": {"reference": patient},
            "authoredOn": format_instant(datetime.now(UTC)),
            "requester": {"reference": owner},
            "owner": {"reference": owner},
            "restriction": {"period": {"start": start, "end": due}},
        }
        await wf.update_in(conn, internal, "Task", task_id, body, if_match=None)
        made.append(task_id)
    return made


async def withdraw_at_release(conn: AsyncConnection, ctx: WorkflowContext, sr_id: str) -> None:
    """A release withdrawn (entered in error): the open follow-ups are cancelled (a release
    recorded again reopens them)."""
    for task in await follow_ups_of(conn, sr_id):
        if task.get("status") not in _OPEN:
            continue
        owner = str((task.get("owner") or {}).get("reference") or "")
        changed = {
            **task,
            "status": "cancelled",
            "statusReason": {"text": _WITHDRAWN},
        }
        await wf.update_in(
            conn,
            _internal(ctx, owner),
            "Task",
            task["id"],
            changed,
            if_match=int(task["meta"]["versionId"]),
        )


# --- overdue follow-ups -------------------------------------------------------------------------

OVERDUE_PRIORITY = "urgent"


def _window_passed(task: dict[str, Any], now: datetime) -> bool:
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    if not isinstance(end, str):
        return False
    try:
        return _instant(end) < now
    except ValueError:
        return False


def _needs_mark(task: dict[str, Any], now: datetime) -> bool:
    return (
        task.get("status") in ("ready", "in-progress")
        and not is_overdue(task)
        and _window_passed(task, now)
    )


async def overdue_candidates(conn: AsyncConnection, now: datetime) -> list[str]:
    """The ids of open follow-up Tasks whose window passed before ``now`` and that carry no
    overdue mark yet (every program's: the server's own look-up)."""
    request = parse_search(
        "Task",
        [
            ("code", f"{FOLLOW_UP_SYSTEM}|{FOLLOW_UP_CONTACT}"),
            ("status", "ready,in-progress"),
            ("_count", "500"),
        ],
        strict=True,
        default_count=500,
        max_count=500,
    )
    found: list[str] = []
    while True:
        page = await run_search(conn, request, access=allow_all)
        for match in page.matches:
            if match.raw is not None and _needs_mark(orjson.loads(match.raw), now):
                found.append(match.id)
        if not page.next_page:
            return found
        request.page = page.next_page


async def mark_overdue(
    conn: AsyncConnection, ctx: WorkflowContext, task_id: str, now: datetime
) -> bool:
    """Mark one follow-up Task overdue (a new version, written for its program); False when
    it needs no mark (completed, cancelled or marked meanwhile, its window moved): the row is
    locked and checked again, so concurrent scans mark it once."""
    current = await repo.get_current(conn, "Task", task_id, for_update=True)
    if current is None or current.deleted or current.raw is None:
        return False
    task = orjson.loads(current.raw)
    if not _needs_mark(task, now):
        return False
    owner = str((task.get("owner") or {}).get("reference") or "")
    changed = {
        **task,
        "businessStatus": {
            "coding": [
                {
                    "system": FOLLOW_UP_SYSTEM,
                    "code": FOLLOW_UP_OVERDUE,
                    "display": FOLLOW_UP_OVERDUE_DISPLAY,
                }
            ],
            "text": FOLLOW_UP_OVERDUE_DISPLAY,
        },
        "priority": OVERDUE_PRIORITY,
    }
    await wf.update_in(
        conn, _internal(ctx, owner), "Task", task_id, changed, if_match=current.version_id
    )
    return True
