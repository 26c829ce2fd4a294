"""Canonical resources (Questionnaires) found by their canonical URL, for every client.

Definitions are directory data: any client may use any Questionnaire, whatever its own scopes,
so the lookup runs without the caller's access filter.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.search.execute import run_search
from service.search.query import parse_search
from service.workflows.context import WorkflowContext


async def find_questionnaire(
    conn: AsyncConnection, ctx: WorkflowContext, canonical: str
) -> dict[str, Any] | None:
    """The stored Questionnaire for ``url|version`` (or ``url``: the newest version)."""
    url, _, version = canonical.partition("|")
    params = [("url", url)] + ([("version", version)] if version else [])
    request = parse_search("Questionnaire", params, strict=True, default_count=50, max_count=50)
    # Directory data: any client may use any Questionnaire, whatever its own scopes.
    page = await run_search(conn, request, base_url=ctx.base_url)
    bodies = [orjson.loads(m.raw) for m in page.matches if m.raw]
    if not bodies:
        return None
    bodies.sort(key=lambda b: str(b.get("version", "")), reverse=True)
    found: dict[str, Any] = bodies[0]
    return found
