"""Person-identifier domains: organizations that share the JMS's person ids (a county jail and
its health unit), declared by an administrator, so that their records of a person land on one
Patient (service.features.people matches within the domain).

A domain is recorded on each member Organization as the extension
``https://handoff.dev/fhir/StructureDefinition/person-identifier-domain`` (valueString: the
domain's name), so the declaration has the Organization's history and audit trail. An
organization belongs to at most one domain.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ForbiddenError, Issue
from service.features.people import DOMAIN_EXTENSION, domain_of_organization
from service.storage import repository as repo
from service.storage.db import read_connection, write_transaction
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

DOMAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9\-]{0,62}$")


def _require_admin(ctx: WorkflowContext) -> None:
    if ctx.principal is not None and not ctx.principal.is_admin:
        raise ForbiddenError("Person-identifier domains are declared by an administrator")


async def _members(conn: AsyncConnection, ctx: WorkflowContext) -> dict[str, list[str]]:
    request = wf.parse_search_params(ctx, "Organization", [("_count", "1000")], strict=True)
    out: dict[str, list[str]] = {}
    async for page in wf.search_pages(conn, ctx, request):
        for match in page.matches:
            domain = domain_of_organization(orjson.loads(match.raw or "{}"))
            if domain:
                out.setdefault(domain, []).append(f"Organization/{match.id}")
    return {d: sorted(orgs) for d, orgs in sorted(out.items())}


async def list_domains(ctx: WorkflowContext) -> list[dict[str, Any]]:
    _require_admin(ctx)
    async with read_connection(ctx.engine) as conn:
        members = await _members(conn, ctx)
    return [{"domain": d, "organizations": orgs} for d, orgs in members.items()]


async def _set_extension(
    conn: AsyncConnection, ctx: WorkflowContext, org_id: str, domain: str | None
) -> None:
    stored = await repo.get_current(conn, "Organization", org_id, for_update=True)
    assert stored is not None and stored.raw is not None
    body = orjson.loads(stored.raw)
    extensions = [e for e in body.get("extension", []) if e.get("url") != DOMAIN_EXTENSION]
    if domain:
        extensions.append({"url": DOMAIN_EXTENSION, "valueString": domain})
    if extensions == body.get("extension", []):
        return
    if extensions:
        body["extension"] = extensions
    else:
        body.pop("extension", None)
    await wf.update_in(conn, ctx, "Organization", org_id, body, if_match=stored.version_id)


async def set_domain(ctx: WorkflowContext, domain: str, organizations: list[str]) -> dict[str, Any]:
    """``domain`` holds exactly ``organizations`` (others leave it; none of them may be in
    another domain: leave that one first)."""
    _require_admin(ctx)
    if not DOMAIN_NAME.match(domain):
        raise BusinessRuleError(
            f"'{domain}' is not a domain name: lower-case letters, digits and hyphens",
            expression=["domain"],
        )
    async with write_transaction(ctx.engine) as conn:
        await repo.lock_key(conn, "person-identifier-domains")
        members = await _members(conn, ctx)
        issues = []
        for i, org in enumerate(organizations):
            rtype, _, rid = org.partition("/")
            if rtype != "Organization" or not await repo.resource_exists(conn, rtype, rid):
                issues.append(
                    Issue(
                        "error", "not-found", f"{org} is not known here", (f"organizations[{i}]",)
                    )
                )
                continue
            elsewhere = [d for d, orgs in members.items() if d != domain and org in orgs]
            if elsewhere:
                issues.append(
                    Issue(
                        "error",
                        "business-rule",
                        f"{org} is in the domain {elsewhere[0]}: remove it there first",
                        (f"organizations[{i}]",),
                    )
                )
        if issues:
            raise BusinessRuleError(issues[0].diagnostics, issues=issues)
        for org in members.get(domain, []):
            if org not in organizations:
                await _set_extension(conn, ctx, org.partition("/")[2], None)
        for org in organizations:
            await _set_extension(conn, ctx, org.partition("/")[2], domain)
    return {"domain": domain, "organizations": sorted(set(organizations))}


async def remove_domain(ctx: WorkflowContext, domain: str) -> None:
    await set_domain(ctx, domain, [])
