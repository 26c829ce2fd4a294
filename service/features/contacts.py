"""The contact log of a peer or treatment program: each attempt to reach a person after
release is a FHIR ``Communication`` (a visit too: ``medium`` in-person; one resource for every
kind of contact keeps the log one search), recorded through FHIR or ``/v1/people/{id}/contacts``.

* ``medium``: in-person, phone, text or video (``contact-medium``);
* reached: ``status`` completed; not reached: ``not-done`` with ``statusReason``;
* what was covered: ``reasonCode`` (``contact-topic``: naloxone in hand, MOUD adherence,
  housing, transport, an overdose since release);
* the next step: a ``note``.

A contact that reached the person completes the program's follow-up Task that is due (the
earliest open one whose window has opened by the contact's time; ``features.followups``): the
Task's ``output`` names the Communication, which is ``basedOn`` it. The log is the program's
own record (tenancy ``creator``): no other organization sees it.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import ForbiddenError
from service.fhir.dates import format_instant
from service.fhir.followup_plan import (
    FOLLOW_UP_CONTACT,
    FOLLOW_UP_SYSTEM,
    MEDIUM_SYSTEM,
    MEDIUMS,
    TOPIC_SYSTEM,
    TOPICS,
)
from service.search.execute import allow_all, run_search
from service.search.query import parse_search
from service.storage.db import read_connection
from service.telemetry import traced_workflow
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

CONTACT_CATEGORY = {
    "coding": [{"system": FOLLOW_UP_SYSTEM, "code": FOLLOW_UP_CONTACT}],
    "text": "Follow-up contact after release",
}
NOT_REACHED = "Person not reached"


@dataclasses.dataclass(frozen=True)
class Contact:
    at: datetime
    medium: str
    reached: bool
    topics: list[str]
    next_step: str | None
    notes: str | None


def _code(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _first(concepts: Any, system: str) -> str | None:
    for concept in concepts if isinstance(concepts, list) else []:
        for coding in concept.get("coding", []) if isinstance(concept, dict) else []:
            if coding.get("system") == system:
                return str(coding.get("code"))
    return None


def contact_view(body: dict[str, Any]) -> dict[str, Any]:
    notes = [str(n.get("text")) for n in body.get("note", []) if isinstance(n, dict)]
    next_step = next((n.removeprefix("Next step: ") for n in notes if n.startswith("Next")), None)
    return {
        "contact_id": body.get("id"),
        "patient_id": str((body.get("subject") or {}).get("reference", "")).removeprefix(
            "Patient/"
        ),
        "at": body.get("sent"),
        "medium": _first(body.get("medium"), MEDIUM_SYSTEM),
        "reached": body.get("status") == "completed",
        "topics": [
            str(c.get("code"))
            for concept in body.get("reasonCode", [])
            for c in concept.get("coding", [])
            if c.get("system") == TOPIC_SYSTEM
        ],
        "next_step": next_step,
        "notes": next((n for n in notes if not n.startswith("Next step: ")), None),
        "follow_up": next(
            (
                str(b.get("reference")).removeprefix("Task/")
                for b in body.get("basedOn", [])
                if str(b.get("reference", "")).startswith("Task/")
            ),
            None,
        ),
    }


async def _due_follow_up(
    conn: AsyncConnection, organization: str, patient: str, at: datetime
) -> dict[str, Any] | None:
    """The program's open follow-up Task for the person whose window opened first by ``at``."""
    request = parse_search(
        "Task",
        [
            ("patient", patient),
            ("owner", organization),
            ("code", f"{FOLLOW_UP_SYSTEM}|{FOLLOW_UP_CONTACT}"),
            ("status", "ready,in-progress"),
        ],
        strict=True,
        default_count=100,
        max_count=100,
    )
    page = await run_search(conn, request, access=allow_all)
    open_tasks = [orjson.loads(m.raw) for m in page.matches if m.raw is not None]
    started = [
        t
        for t in open_tasks
        if str(((t.get("restriction") or {}).get("period") or {}).get("start", "9999"))
        <= format_instant(at)
    ]
    started.sort(key=lambda t: str(t["restriction"]["period"].get("end", "9999")))
    return started[0] if started else None


@traced_workflow(
    "workflow.record_contact", resource_type="Communication", interaction="create", id_position=1
)
async def record(
    ctx: WorkflowContext,
    patient_id: str,
    contact: Contact,
    *,
    idempotency_key: str | None,
    fingerprint: str,
) -> tuple[int, dict[str, Any]]:
    organization = ctx.organization
    if organization is None:
        raise ForbiddenError("Only a client acting for an organization keeps a contact log")

    async def create(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        await wf.read_in(conn, ctx, "Patient", patient_id)  # 404 unless a party
        patient = f"Patient/{patient_id}"
        task = (
            await _due_follow_up(conn, organization, patient, contact.at)
            if contact.reached
            else None
        )
        body: dict[str, Any] = {
            "resourceType": "Communication",
            "status": "completed" if contact.reached else "not-done",
            "category": [CONTACT_CATEGORY],
            "medium": [_code(MEDIUM_SYSTEM, contact.medium, MEDIUMS[contact.medium])],
            "subject": {"reference": patient},
            "sent": format_instant(contact.at.astimezone(UTC)),
            "sender": {"reference": organization},
            "recipient": [{"reference": patient}],
        }
        if not contact.reached:
            body["statusReason"] = {"text": NOT_REACHED}
        if contact.topics:
            body["reasonCode"] = [_code(TOPIC_SYSTEM, t, TOPICS[t]) for t in contact.topics]
        notes = [f"Next step: {contact.next_step}"] if contact.next_step else []
        notes += [contact.notes] if contact.notes else []
        if notes:
            body["note"] = [{"text": n} for n in notes]
        if task is not None:
            body["basedOn"] = [{"reference": f"Task/{task['id']}"}]
        made = await wf.create_in(conn, ctx, body)
        view = contact_view(orjson.loads(made.stored.raw or "{}"))
        if task is not None:
            done = {
                **task,
                "status": "completed",
                "executionPeriod": {"end": body["sent"]},
                "output": [
                    *task.get("output", []),
                    {
                        "type": {"text": "Contact"},
                        "valueReference": {"reference": f"Communication/{made.stored.id}"},
                    },
                ],
            }
            # The program's own Task, closed by its own contact: not among what the answer
            # shows (an Idempotency-Key replay shows the contact again).
            internal = dataclasses.replace(ctx, written=[])
            await wf.update_in(
                conn, internal, "Task", task["id"], done, if_match=int(task["meta"]["versionId"])
            )
        return 201, view

    return await idempotency.run_once(
        ctx, key=idempotency_key, fingerprint=fingerprint, work=create
    )


async def log(ctx: WorkflowContext, patient_id: str) -> list[dict[str, Any]]:
    """The caller's own contacts with the person, newest first."""
    async with read_connection(ctx.engine) as conn:
        await wf.read_in(conn, ctx, "Patient", patient_id)
        request = wf.parse_search_params(
            ctx,
            "Communication",
            [("subject", f"Patient/{patient_id}"), ("_count", "500")],
            strict=True,
        )
        views: list[dict[str, Any]] = []
        async for page in wf.search_pages(conn, ctx, request):
            views.extend(contact_view(orjson.loads(m.raw)) for m in page.matches if m.raw)
    return sorted(views, key=lambda v: (v["at"] or "", v["contact_id"] or ""), reverse=True)
