"""A program's follow-up plan through ``/v1/follow-up-plans``, for peer and treatment programs
without FHIR: a name and contacts due so many hours or days after the release, stored as the
program's FHIR ``PlanDefinition`` exactly as one published through FHIR (``useContext``
``program`` naming the caller's organization, each action's ``timingDuration`` its offset).

The newest active plan applies to the releases recorded after it (``features.followups``):
a change (PUT, a new version) or a new plan never moves follow-ups already made. A plan is its
organization's own record (tenancy ``creator``); the built-in default is everyone's and
read-only. Scopes are those of the FHIR path: ``PlanDefinition`` c to publish, u to change,
r/s to read.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any, Final, Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ForbiddenError, Issue
from service.features.followups import plan_for, program_of
from service.fhir.followup_plan import (
    DEFAULT_PLAN_ID,
    UCUM,
    USAGE_CONTEXT_TYPE,
    action_due,
    contact_code,
)
from service.fhir.resource import new_id
from service.storage.db import read_connection, write_transaction
from service.telemetry import traced_workflow
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

Unit = Literal["hours", "days"]
_UCUM: Final[dict[str, str]] = {"hours": "h", "days": "d"}
_UNITS: Final[dict[str, str]] = {"h": "hours", "d": "days", "min": "minutes", "wk": "weeks"}
# The latest contact a plan may schedule after the release.
MAX_AFTER: Final = timedelta(days=365)


@dataclasses.dataclass(frozen=True)
class Action:
    title: str
    value: int
    unit: Unit


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    description: str | None
    actions: list[Action]
    active: bool


def _problem(message: str, expression: str) -> BusinessRuleError:
    return BusinessRuleError(message, issues=[Issue("error", "value", message, (expression,))])


def _check(plan: Plan) -> None:
    if not plan.actions:
        raise _problem("actions: give at least one contact", "actions")
    for i, action in enumerate(plan.actions):
        after = timedelta(hours=action.value) * (24 if action.unit == "days" else 1)
        if after > MAX_AFTER:
            raise _problem(
                f"actions[{i}].after: at most {MAX_AFTER.days} days after the release",
                f"actions[{i}].after",
            )
    offsets = [(a.value * (24 if a.unit == "days" else 1)) for a in plan.actions]
    if len(set(offsets)) != len(offsets):
        raise _problem(
            "actions: two contacts are due at the same time after the release; give each "
            "its own offset",
            "actions",
        )


def _organization(ctx: WorkflowContext) -> str:
    if ctx.organization is None:
        raise ForbiddenError("Only a client acting for an organization publishes a plan")
    return ctx.organization


def _body(
    ctx: WorkflowContext, organization: str, plan_id: str, version: int, plan: Plan
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "id": plan_id,
        "url": f"{ctx.base_url}/PlanDefinition/{plan_id}",
        "version": str(version),
        "title": plan.name,
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/plan-definition-type",
                    "code": "workflow-definition",
                }
            ]
        },
        "status": "active" if plan.active else "retired",
        "useContext": [
            {
                "code": {"system": USAGE_CONTEXT_TYPE, "code": "program"},
                "valueReference": {"reference": organization},
            }
        ],
        "action": [
            {
                "id": f"contact-{i + 1}",
                "title": action.title,
                "code": [contact_code()],
                "timingDuration": {
                    "value": action.value,
                    "unit": _UCUM[action.unit],
                    "system": UCUM,
                    "code": _UCUM[action.unit],
                },
            }
            for i, action in enumerate(
                sorted(plan.actions, key=lambda a: a.value * (24 if a.unit == "days" else 1))
            )
        ],
    }
    if plan.description:
        body["description"] = plan.description
    return body


def plan_view(ctx: WorkflowContext, body: dict[str, Any], *, current: bool) -> dict[str, Any]:
    """A PlanDefinition as ``/v1`` shows it."""
    actions = []
    for action in body.get("action", []):
        if not isinstance(action, dict) or action_due(action) is None:
            continue
        duration = action["timingDuration"]
        unit = str(duration.get("code") or duration.get("unit"))
        actions.append(
            {
                "id": action.get("id"),
                "title": action.get("title"),
                "after": {"value": duration["value"], "unit": _UNITS.get(unit, unit)},
            }
        )
    root = ctx.base_url.removesuffix("/fhir")
    return {
        "plan_id": body["id"],
        "name": body.get("title") or body.get("name"),
        "description": body.get("description"),
        "status": body.get("status"),
        "builtin": body["id"] == DEFAULT_PLAN_ID,
        "current": current,
        "version": int((body.get("meta") or {}).get("versionId") or 1),
        "updated_at": (body.get("meta") or {}).get("lastUpdated"),
        "actions": actions,
        "links": {
            "self": f"{root}/v1/follow-up-plans/{body['id']}",
            "plan_definition": f"{ctx.base_url}/PlanDefinition/{body['id']}",
        },
    }


async def _current_id(conn: AsyncConnection, organization: str) -> str:
    return str((await plan_for(conn, organization)).get("id") or DEFAULT_PLAN_ID)


@traced_workflow(
    "workflow.publish_follow_up_plan", resource_type="PlanDefinition", interaction="create"
)
async def publish(
    ctx: WorkflowContext, plan: Plan, *, idempotency_key: str | None, fingerprint: str
) -> tuple[int, dict[str, Any]]:
    """A new plan of the caller's organization (201); it applies to releases from now on."""
    organization = _organization(ctx)
    _check(plan)

    async def create(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        plan_id = new_id()
        body = _body(ctx, organization, plan_id, 1, plan)
        made = await wf.create_in(conn, ctx, body, resource_id=plan_id)
        stored = orjson.loads(made.stored.raw or "{}")
        return 201, plan_view(ctx, stored, current=plan.active)

    return await idempotency.run_once(
        ctx, key=idempotency_key, fingerprint=fingerprint, work=create
    )


async def _own(conn: AsyncConnection, ctx: WorkflowContext, plan_id: str) -> dict[str, Any]:
    stored = await wf.read_in(conn, ctx, "PlanDefinition", plan_id)  # 404 unless visible
    return wf.loads(stored)


@traced_workflow(
    "workflow.change_follow_up_plan",
    resource_type="PlanDefinition",
    interaction="update",
    id_position=1,
)
async def change(ctx: WorkflowContext, plan_id: str, plan: Plan) -> dict[str, Any]:
    """A new version of the caller's plan; follow-ups already made keep their times."""
    organization = _organization(ctx)
    _check(plan)
    async with write_transaction(ctx.engine) as conn:
        current = await wf.read_in(conn, ctx, "PlanDefinition", plan_id, lock=True)
        before = wf.loads(current)
        if plan_id != DEFAULT_PLAN_ID and program_of(before) != organization:
            raise ForbiddenError(
                f"PlanDefinition/{plan_id} is not a follow-up plan of your organization"
            )
        previous = str(before.get("version") or "")
        version = int(previous) + 1 if previous.isdigit() else current.version_id + 1
        body = _body(ctx, organization, plan_id, version, plan)
        if before.get("url"):
            body["url"] = before["url"]
        done = await wf.update_in(
            conn, ctx, "PlanDefinition", plan_id, body, if_match=current.version_id
        )
        stored = orjson.loads(done.stored.raw or "{}")
        current_id = await _current_id(conn, organization)
    return plan_view(ctx, stored, current=current_id == plan_id)


@traced_workflow("workflow.follow_up_plans", resource_type="PlanDefinition", interaction="search")
async def list_plans(ctx: WorkflowContext) -> list[dict[str, Any]]:
    """The caller's plans, newest first, then the built-in default; ``current``: the one the
    next release follows."""
    organization = _organization(ctx)
    async with read_connection(ctx.engine) as conn:
        request = wf.parse_search_params(
            ctx,
            "PlanDefinition",
            [("_sort", "-_lastUpdated"), ("_count", "100")],
            strict=True,
        )
        bodies: list[dict[str, Any]] = []
        async for page in wf.search_pages(conn, ctx, request):
            bodies.extend(orjson.loads(m.raw) for m in page.matches if m.raw)
        current_id = await _current_id(conn, organization)
    own = [b for b in bodies if program_of(b) == organization]
    builtin = [b for b in bodies if b.get("id") == DEFAULT_PLAN_ID]
    return [plan_view(ctx, b, current=b["id"] == current_id) for b in [*own, *builtin]]


@traced_workflow(
    "workflow.follow_up_plan", resource_type="PlanDefinition", interaction="read", id_position=1
)
async def get(ctx: WorkflowContext, plan_id: str) -> dict[str, Any]:
    organization = _organization(ctx)
    async with read_connection(ctx.engine) as conn:
        body = await _own(conn, ctx, plan_id)
        current_id = await _current_id(conn, organization)
    return plan_view(ctx, body, current=body["id"] == current_id)
