"""The accepting-new-patients flag, maintained by the organization that provides the service.

Directory data is written by administrators (``workflows.access``), with one exception: the
organization a HealthcareService names in ``providedBy`` may change that service's
accepting-new-patients characteristic (``fhir.service_codes``), and nothing else of it. It may
do so with FHIR (PUT or PATCH of the HealthcareService, its scope allowing ``u`` on
HealthcareService) or with ``PUT /v1/directory/services/{id}/accepting``.
"""

from __future__ import annotations

from typing import Any

from service.errors import ForbiddenError
from service.fhir.service_codes import accepting_of, with_accepting
from service.storage.db import write_transaction
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet


def _rest(body: dict[str, Any]) -> dict[str, Any]:
    """What the owner may not change: everything but the flag and the server's meta."""
    return {k: v for k, v in with_accepting(body, None).items() if k not in ("meta", "text")}


def _provider(body: dict[str, Any]) -> Any:
    return (body.get("providedBy") or {}).get("reference")


def owner_may_change(organization: str, current: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``organization`` may turn ``current`` into ``new``: it provides the service and
    changes only its accepting-new-patients flag."""
    return (
        _provider(current) == organization
        and _provider(new) == organization
        and _rest(current) == _rest(new)
    )


def register(rules: RuleSet) -> None:
    rules.owner_maintained["HealthcareService"] = owner_may_change


async def set_accepting(ctx: WorkflowContext, service_id: str, accepting: bool) -> dict[str, Any]:
    """Set a HealthcareService's flag; returns the service as stored. The write goes through
    the ordinary update path, so only its provider (or an administrator) may make it."""
    async with write_transaction(ctx.engine) as conn:
        current = await wf.read_in(conn, ctx, "HealthcareService", service_id, lock=True)
        body = wf.loads(current)
        principal = ctx.principal
        if (
            principal is not None
            and not principal.is_admin
            and _provider(body) != (ctx.organization)
        ):
            raise ForbiddenError(
                f"HealthcareService/{service_id} is provided by {_provider(body) or 'nobody'}: "
                "only that organization (or an administrator) may say whether it accepts new "
                "patients",
                expression=["HealthcareService.providedBy"],
            )
        if accepting_of(body) is accepting:
            return body
        result = await wf.update_in(
            conn,
            ctx,
            "HealthcareService",
            service_id,
            with_accepting(body, accepting),
            if_match=current.version_id,
        )
        return wf.loads(result.stored)
