"""Checked after every API test: each interaction with patient data left an AuditEvent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage.repository import index_t

# Answered before any handler could know who asked or what (routing, negotiation, URL, header
# and body limits): nothing was accessed, so there is nothing to audit.
NOT_ROUTED = {405, 406, 413, 414, 415, 431}
PUBLIC = ("/fhir/metadata", "/fhir/.well-known", "/auth/", "/docs", "/openapi.json")


@pytest.fixture(autouse=True)
async def every_interaction_is_audited(
    http_log: list[tuple[str, str, int, str]], engine: AsyncEngine
) -> AsyncIterator[None]:
    yield
    due = {
        rid: (method, path, status)
        for method, path, status, rid in http_log
        if path.startswith(("/fhir", "/v1"))
        and not path.startswith(PUBLIC)
        and status not in NOT_ROUTED
        and status != 304
        and rid
    }
    if not due:
        return
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(index_t.c.value).where(
                index_t.c.resource_type == "AuditEvent",
                index_t.c.param == "request-id",
                index_t.c.value.in_(list(due)),
            )
        )
        audited = {r[0] for r in rows}
    missing = {rid: due[rid] for rid in due if rid not in audited}
    # Unknown routes (404 from the router) never reach a handler either.
    missing = {k: v for k, v in missing.items() if not (v[2] == 404 and _unrouted(v[1]))}
    assert not missing, f"requests without an AuditEvent: {sorted(missing.values())}"


def _unrouted(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "fhir":
        from service.fhir.r4 import SUPPORTED_TYPES

        if parts[1] not in SUPPORTED_TYPES and not parts[1].startswith("_"):
            return True
    return len(parts) > 5  # the deepest route is /fhir/Type/id/_history/vid
