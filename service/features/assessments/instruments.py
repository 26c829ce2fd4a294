"""The instruments a JMS can present: stored Questionnaires, by key (the Questionnaire id)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ResourceNotFoundError
from service.questionnaires.view import instrument_view
from service.search.execute import run_search
from service.search.query import parse_search
from service.storage import repository as repo
from service.storage.db import read_connection
from service.workflows.canonicals import find_questionnaire
from service.workflows.context import WorkflowContext


async def resolve_instrument(
    conn: AsyncConnection, ctx: WorkflowContext, key: str
) -> dict[str, Any]:
    """A Questionnaire by key (its id, e.g. ``taps``) or canonical (``url`` or ``url|version``)."""
    if "://" in key:
        found = await find_questionnaire(conn, ctx, key)
    else:
        stored = await repo.get_current(conn, "Questionnaire", key)
        found = orjson.loads(stored.raw) if stored and stored.raw else None
    if found is None:
        raise BusinessRuleError(
            f"Unknown instrument '{key}'; GET /v1/instruments lists the instruments",
            expression=["instrument"],
        )
    if found.get("status") != "active":
        raise BusinessRuleError(
            f"Instrument '{key}' is {found.get('status')}, not active", expression=["instrument"]
        )
    return found


async def list_instruments(ctx: WorkflowContext) -> list[dict[str, Any]]:
    async with read_connection(ctx.engine) as conn:
        request = parse_search(
            "Questionnaire", [("status", "active")], strict=True, default_count=200, max_count=200
        )
        page = await run_search(conn, request, base_url=ctx.base_url)
    out = []
    for match in page.matches:
        body = orjson.loads(match.raw or "{}")
        view = instrument_view(body)
        out.append(
            {
                "key": match.id,
                "title": view.get("title"),
                "url": view.get("url"),
                "version": view.get("version"),
                "copyright": view.get("copyright"),
                "scored": any(i.get("calculated") for i in _flatten(view.get("items", []))),
                "triage": view.get("triage") is not None,
            }
        )
    return sorted(out, key=lambda i: str(i["key"]))


def _flatten(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat: list[dict[str, Any]] = []
    for item in items:
        flat.append(item)
        flat.extend(_flatten(item.get("items") or []))
    return flat


async def get_instrument(ctx: WorkflowContext, key: str) -> dict[str, Any]:
    async with read_connection(ctx.engine) as conn:
        stored = await repo.get_current(conn, "Questionnaire", key)
    if stored is None or stored.raw is None or stored.deleted:
        raise ResourceNotFoundError(f"No instrument '{key}'; GET /v1/instruments lists them")
    view = instrument_view(orjson.loads(stored.raw))
    view["key"] = key
    return view
