"""Releases drive the handoff: the referrals that belong to a custody stay follow its expected
release, carry its recorded release, and escalate when the person leaves before the referral
was accepted. Milestones that can only happen after the release are refused before it.

A referral belongs to a custody stay through ``ServiceRequest.encounter``. The recorded
release is on the ServiceRequest as two extensions (``released-at``, ``release-planning``),
so that the referral's timeline, the worklist, the rule on milestones and anything that
watches referrals (notifications) read it from the referral itself: ``record_release`` is the
one place it is written, and ``ReleaseRecorded`` says what it did.

A recorded release also applies the receiving program's follow-up plan to each accepted
peer-support or treatment referral (``features.followups``).

An escalation is recorded as data on the referral, as the SDOH Clinical Care referral model
has it: the ServiceRequest's and the open Task's ``priority`` become ``stat`` and the open
Task's ``businessStatus`` the ``released-unplanned`` milestone; ``GET
/v1/referrals/escalations`` lists it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, Issue
from service.features import followups
from service.features.custody.mapping import expected_release_of, release_of
from service.fhir import codes
from service.fhir.custody_codes import (
    RELEASE_PLANNING_EXTENSION,
    RELEASED_AT_EXTENSION,
    release_of_referral,
)
from service.search.execute import allow_all, run_search
from service.search.query import parse_search
from service.storage import repository as repo
from service.storage.repository import StoredResource
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet, WriteEvent

# Milestones that can only happen once the person is out (clinical-content.md §2.6, §5).
POST_RELEASE_MILESTONES = frozenset(
    {"met-at-release", "first-appointment-attended", "no-show", "closed-engaged"}
)
# A release this much before the expected one counts as early (unplanned for the handoff).
EARLY_RELEASE_MARGIN = timedelta(hours=1)
# Task statuses of a referral not (or no longer) accepted by anyone.
_NOT_ACCEPTED = frozenset({"draft", "requested", "rejected", "failed"})


@dataclass(frozen=True)
class Escalation:
    """A referral not yet accepted when its person left custody unplanned or early."""

    referral_id: str  # ServiceRequest id
    task_id: str | None  # the Task marked stat / released-unplanned (None: no open Task)
    reason: str


@dataclass(frozen=True)
class ReleaseRecorded:
    """What recording a release did: the referrals that now carry it, and the escalations."""

    stay_id: str
    patient: str  # Patient/<id>
    released_at: str
    planned: bool
    referrals: list[str]
    escalations: list[Escalation]


def _internal(ctx: WorkflowContext) -> WorkflowContext:
    """The server's own writes that follow a custody change, recorded for the organization
    that made it (the receiving organization's Task and the referrer's ServiceRequest change
    because the jail recorded a release, not because the jail edits them)."""
    return dataclasses.replace(
        ctx,
        principal=None,
        on_behalf_of=ctx.organization,
        access=allow_all,
        search_access=None,
        write_access=None,
    )


async def _search_all(
    conn: AsyncConnection, ctx: WorkflowContext, rtype: str, params: list[tuple[str, str]]
) -> list[StoredResource]:
    request = parse_search(rtype, params, strict=True, default_count=1000, max_count=1000)
    out: list[StoredResource] = []
    while True:
        page = await run_search(conn, request, base_url=ctx.base_url)
        out.extend(m for m in page.matches if m.raw is not None)
        if page.next_page is None:
            return out
        request.page = page.next_page


async def _linked(conn: AsyncConnection, ctx: WorkflowContext, stay_id: str) -> list[str]:
    """Every referral (ServiceRequest id) of the stay, as stored: for the server's own rules."""
    found = await _search_all(conn, ctx, "ServiceRequest", [("encounter", f"Encounter/{stay_id}")])
    return sorted(s.id for s in found)


async def referrals_of_stay(conn: AsyncConnection, ctx: WorkflowContext, stay_id: str) -> list[str]:
    """The referrals of the stay the caller may see."""
    request = wf.parse_search_params(
        ctx, "ServiceRequest", [("encounter", f"Encounter/{stay_id}")], strict=True
    )
    out: list[str] = []
    async for page in wf.search_pages(conn, ctx, request):
        out.extend(m.id for m in page.matches)
    return sorted(out)


async def _locked_referral(
    conn: AsyncConnection, ctx: WorkflowContext, sr_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The referral's open Tasks and then its ServiceRequest, each locked at its latest version
    (the lock order of every referral writer: Tasks first)."""
    tasks = []
    for found in await _search_all(conn, ctx, "Task", [("focus", f"ServiceRequest/{sr_id}")]):
        locked = await repo.get_current(conn, "Task", found.id, for_update=True)
        if locked is not None and locked.raw is not None and not locked.deleted:
            tasks.append(orjson.loads(locked.raw))
    tasks.sort(key=lambda t: (t.get("authoredOn", ""), t["meta"]["lastUpdated"]))
    sr_row = await repo.get_current(conn, "ServiceRequest", sr_id, for_update=True)
    sr = orjson.loads(sr_row.raw) if sr_row is not None and sr_row.raw else {}
    return sr, tasks


async def _update(conn: AsyncConnection, ctx: WorkflowContext, body: dict[str, Any]) -> None:
    await wf.update_in(
        conn,
        _internal(ctx),
        body["resourceType"],
        body["id"],
        body,
        if_match=int(body["meta"]["versionId"]),
    )


async def follow_expected_release(
    conn: AsyncConnection, ctx: WorkflowContext, stay: dict[str, Any]
) -> None:
    """The active referrals of the stay take its expected release (not once released)."""
    expected = expected_release_of(stay)
    if expected is None or release_of(stay) is not None:
        return
    for sr_id in await _linked(conn, ctx, stay["id"]):
        sr, tasks = await _locked_referral(conn, ctx, sr_id)
        if sr.get("status") != "active":
            continue
        period = {**(sr.get("occurrencePeriod") or {}), "start": expected}
        if "end" in period and period["end"] < expected:
            period.pop("end")
        for task in tasks:
            if (
                task.get("status") in ("requested", "accepted", "in-progress", "on-hold", "draft")
                and (task.get("restriction") or {}).get("period") != period
            ):
                task["restriction"] = {**(task.get("restriction") or {}), "period": period}
                await _update(conn, ctx, task)
        if sr.get("occurrencePeriod") != period:
            sr["occurrencePeriod"] = period
            await _update(conn, ctx, sr)


def _without_release(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in resource.get("extension", [])
        if e.get("url") not in (RELEASED_AT_EXTENSION, RELEASE_PLANNING_EXTENSION)
    ]


async def record_release(
    conn: AsyncConnection, ctx: WorkflowContext, stay: dict[str, Any]
) -> ReleaseRecorded:
    """The release of ``stay`` on each of its referrals (ServiceRequest ``released-at`` and
    ``release-planning``), and an escalation for each referral not yet accepted when the
    release was unplanned or earlier than expected (see the module's docstring)."""
    released = release_of(stay)
    assert released is not None, "record_release needs a released stay"
    when = (stay.get("period") or {})["end"]
    planning = "planned" if released.planned else "unplanned"
    referrals: list[str] = []
    escalations: list[Escalation] = []
    for sr_id in await _linked(conn, ctx, stay["id"]):
        sr, tasks = await _locked_referral(conn, ctx, sr_id)
        if sr.get("status") not in ("active", "on-hold", "draft"):
            continue
        referrals.append(sr_id)
        expected = (sr.get("occurrencePeriod") or {}).get("start")
        early = bool(expected) and released.released_at < (
            datetime.fromisoformat(str(expected).replace("Z", "+00:00")) - EARLY_RELEASE_MARGIN
        )
        current = tasks[-1] if tasks else None
        not_accepted = current is None or current.get("status") in _NOT_ACCEPTED
        before = dict(sr)
        sr["extension"] = [
            *_without_release(sr),
            {"url": RELEASED_AT_EXTENSION, "valueDateTime": when},
            {"url": RELEASE_PLANNING_EXTENSION, "valueCode": planning},
        ]
        if (not released.planned or early) and not_accepted:
            reason = (
                "released without notice" if not released.planned else f"released before {expected}"
            ) + " before the referral was accepted"
            task_id = None
            if current is not None and current.get("status") in ("draft", "requested"):
                current["priority"] = "stat"
                current["businessStatus"] = codes.business_status("released-unplanned")
                await _update(conn, ctx, current)
                task_id = current["id"]
            sr["priority"] = "stat"
            escalations.append(Escalation(referral_id=sr_id, task_id=task_id, reason=reason))
        if sr != before:
            await _update(conn, ctx, sr)
        await followups.apply_at_release(conn, ctx, sr, tasks, released.released_at)
    return ReleaseRecorded(
        stay_id=stay["id"],
        patient=str((stay.get("subject") or {}).get("reference")),
        released_at=when,
        planned=released.planned,
        referrals=referrals,
        escalations=escalations,
    )


async def withdraw_release(
    conn: AsyncConnection, ctx: WorkflowContext, stay: dict[str, Any]
) -> None:
    """A release cancelled in error: the referrals no longer carry it (an escalation stays:
    the receiving organization may already have acted on it)."""
    for sr_id in await _linked(conn, ctx, stay["id"]):
        row = await repo.get_current(conn, "ServiceRequest", sr_id, for_update=True)
        if row is None or row.raw is None:
            continue
        sr = orjson.loads(row.raw)
        kept = _without_release(sr)
        if kept == sr.get("extension", []):
            continue
        sr["extension"] = kept
        await _update(conn, ctx, sr)
        await followups.withdraw_at_release(conn, ctx, sr_id)
    await follow_expected_release(conn, ctx, stay)


# --- the rule on post-release milestones -------------------------------------------------------


def _milestones(task: dict[str, Any] | None) -> set[str]:
    return {
        str(c.get("code"))
        for c in ((task or {}).get("businessStatus") or {}).get("coding", [])
        if isinstance(c, dict) and c.get("system") == codes.BUSINESS_STATUS_SYSTEM
    }


async def _post_release_milestones(event: WriteEvent) -> None:
    """A referral of a custody stay records a post-release milestone only once the stay's
    release is recorded."""
    new = event.body
    if new is None:
        return
    added = (_milestones(new) - _milestones(event.current_body)) & POST_RELEASE_MILESTONES
    if not added:
        return
    focus = str((new.get("focus") or {}).get("reference", ""))
    if not focus.startswith("ServiceRequest/"):
        return
    row = await repo.get_current(
        event.conn, "ServiceRequest", focus.removeprefix("ServiceRequest/")
    )
    if row is None or row.raw is None:
        return
    sr = orjson.loads(row.raw)
    stay = (sr.get("encounter") or {}).get("reference")
    if not stay or release_of_referral(sr) is not None:
        return
    expected = (sr.get("occurrencePeriod") or {}).get("start")
    message = (
        f"'{sorted(added)[0]}' can only be recorded after the person's release, and the custody "
        f"stay of this referral ({stay}) records no release yet"
        + (f" (expected {expected})" if expected else "")
        + ": record it once the jail has recorded the release"
    )
    raise BusinessRuleError(
        message, issues=[Issue("error", "business-rule", message, ("Task.businessStatus",))]
    )


def register(rules: RuleSet) -> None:
    rules.on_write("Task", _post_release_milestones)


def released_within(released_at: datetime, days: int) -> bool:
    return datetime.now(UTC) - released_at <= timedelta(days=days)
