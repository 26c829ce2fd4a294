"""A program's follow-up worklist (``GET /v1/follow-ups``): its open follow-up Tasks
(``features.followups``) as overdue, due today or upcoming, with the person's name, the
release and the last contact, soonest due first, paged by position.

The same Tasks as the FHIR search ``Task?owner=<org>&code=<follow-up-contact>&status=ready``
(sorted by ``restriction.period.end``, the due time)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ForbiddenError, Issue
from service.features.contacts import contact_view
from service.features.referrals import FACILITY_EXTENSION
from service.fhir.followup_plan import FOLLOW_UP_CONTACT, FOLLOW_UP_SYSTEM
from service.storage.db import read_connection
from service.telemetry import traced_workflow
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

Bucket = Literal["overdue", "due-today", "upcoming"]
BUCKETS: tuple[Bucket, ...] = ("overdue", "due-today", "upcoming")


def bucket_of(due: str | None, now: datetime) -> Bucket:
    if not due:
        return "upcoming"
    when = datetime.fromisoformat(due.replace("Z", "+00:00")).astimezone(UTC)
    if when < now:
        return "overdue"
    return "due-today" if when.date() == now.date() else "upcoming"


async def _all(
    conn: AsyncConnection, ctx: WorkflowContext, rtype: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    request = wf.parse_search_params(ctx, rtype, [*params, ("_count", "500")], strict=True)
    out: list[dict[str, Any]] = []
    async for page in wf.search_pages(conn, ctx, request):
        out.extend(orjson.loads(m.raw) for m in page.matches if m.raw)
    return out


def _name(patient: dict[str, Any] | None) -> dict[str, Any] | None:
    if patient is None:
        return None
    name: dict[str, Any] = next(iter(patient.get("name", [])), {})
    return {"family_name": name.get("family"), "given_names": list(name.get("given", []))}


async def _facilities(
    conn: AsyncConnection, ctx: WorkflowContext, referral_ids: set[str | None]
) -> dict[str, tuple[str | None, str | None]]:
    """The referring facility of each referral (the reference and, if the caller may see it,
    its name), from the ServiceRequests the caller may see."""
    wanted = sorted(r for r in referral_ids if r)
    if not wanted:
        return {}
    refs: dict[str, str] = {}
    for sr in await _all(conn, ctx, "ServiceRequest", [("_id", ",".join(wanted))]):
        ref = next(
            (
                (e.get("valueReference") or {}).get("reference")
                for e in sr.get("extension", [])
                if e.get("url") == FACILITY_EXTENSION
            ),
            None,
        )
        if isinstance(ref, str):
            refs[sr["id"]] = ref
    names: dict[str, str | None] = {}
    for rtype in ("Location", "Organization"):
        ids = sorted({r.partition("/")[2] for r in refs.values() if r.startswith(f"{rtype}/")})
        if ids:
            for body in await _all(conn, ctx, rtype, [("_id", ",".join(ids))]):
                names[f"{rtype}/{body['id']}"] = body.get("name")
    return {sr_id: (ref, names.get(ref)) for sr_id, ref in refs.items()}


def _cursor(item: dict[str, Any]) -> str:
    key = [item["due_at"] or "", item["task_id"]]
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def _position(after: str) -> tuple[str, str]:
    try:
        due, task_id = orjson.loads(base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)))
        return str(due), str(task_id)
    except (ValueError, TypeError, binascii.Error):
        message = "after is not a worklist position: follow the next link a worklist returned"
        raise BusinessRuleError(
            message, issues=[Issue("error", "value", message, ("after",))]
        ) from None


@traced_workflow("workflow.follow_ups", resource_type="Task", interaction="search")
async def follow_ups(
    ctx: WorkflowContext,
    *,
    buckets: set[str] | None,
    limit: int,
    after: str | None,
    now: datetime | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The page of the caller's follow-ups after position ``after``, and the next position."""
    organization = ctx.organization
    if organization is None:
        raise ForbiddenError("Only a client acting for an organization has a follow-up worklist")
    now = now or datetime.now(UTC)
    async with read_connection(ctx.engine) as conn:
        tasks = await _all(
            conn,
            ctx,
            "Task",
            [
                ("owner", organization),
                ("code", f"{FOLLOW_UP_SYSTEM}|{FOLLOW_UP_CONTACT}"),
                ("status", "ready,in-progress"),
            ],
        )
        items = []
        for task in tasks:
            period = (task.get("restriction") or {}).get("period") or {}
            due = period.get("end")
            bucket = bucket_of(due, now)
            if buckets is not None and bucket not in buckets:
                continue
            items.append(
                {
                    "task_id": task["id"],
                    "bucket": bucket,
                    "due_at": due,
                    "released_at": period.get("start"),
                    "description": task.get("description"),
                    "referral_id": next(
                        (
                            str(b.get("reference")).removeprefix("ServiceRequest/")
                            for b in task.get("basedOn", [])
                            if str(b.get("reference", "")).startswith("ServiceRequest/")
                        ),
                        None,
                    ),
                    "patient_id": str((task.get("for") or {}).get("reference", "")).removeprefix(
                        "Patient/"
                    ),
                }
            )
        items.sort(key=lambda i: (i["due_at"] or "", i["task_id"]))
        if after is not None:
            position = _position(after)
            items = [i for i in items if (i["due_at"] or "", i["task_id"]) > position]
        page, following = items[:limit], None
        if len(items) > limit:
            following = _cursor(page[-1])
        patients = {i["patient_id"] for i in page}
        shown: dict[str, dict[str, Any]] = {}
        last: dict[str, dict[str, Any]] = {}
        if patients:
            ids = ",".join(sorted(patients))
            for patient in await _all(conn, ctx, "Patient", [("_id", ids)]):
                shown[patient["id"]] = patient
            subjects = ",".join(f"Patient/{p}" for p in sorted(patients))
            for body in await _all(conn, ctx, "Communication", [("subject", subjects)]):
                view = contact_view(body)
                before = last.get(view["patient_id"])
                if before is None or (view["at"] or "") > (before["at"] or ""):
                    last[view["patient_id"]] = view
        facilities = await _facilities(conn, ctx, {i["referral_id"] for i in page})
        for item in page:
            item["facility"], item["facility_name"] = facilities.get(
                item["referral_id"] or "", (None, None)
            )
            item["person"] = _name(shown.get(item["patient_id"]))
            contact = last.get(item["patient_id"])
            item["last_contact"] = (
                {k: contact[k] for k in ("contact_id", "at", "medium", "reached")}
                if contact
                else None
            )
    return page, following
