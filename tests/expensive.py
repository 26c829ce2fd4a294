"""A genuinely expensive search, for tests of what the service does with one: hundreds of
distinct ``identifier:not`` criteria and their total over many Tasks. PostgreSQL's planning
time grows much faster than the number of criteria (200: ~2 s a statement, 600: ~15 s on the
development machine); SQLite runs every criterion against every Task (200 over 20,000: tens of
seconds). The search limits must be raised to send it (HANDOFF_SEARCH_MAX_PARAMS and
HANDOFF_SEARCH_MAX_REPEATS), as an operator may raise them: the statement timeout and the
disconnect watch are what stop whatever the limits let through.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage.db import write_transaction
from service.storage.repository import index_t, resource_t


def expensive_search(criteria: int) -> list[tuple[str, str]]:
    return [("_total", "accurate"), *((("identifier:not", f"V-{i}")) for i in range(criteria))]


async def load_tasks(engine: AsyncEngine, count: int) -> None:
    """``count`` Tasks, ``bulk-<i>`` with identifier ``V-<i>``, written straight into the
    tables (through the API it would take minutes)."""
    now = datetime.now(UTC)
    resources = [
        {
            "resource_type": "Task",
            "id": f"bulk-{i}",
            "version_id": 1,
            "last_updated": now,
            "deleted": False,
            "raw": orjson.dumps({"resourceType": "Task", "id": f"bulk-{i}"}).decode(),
            "content": None,
        }
        for i in range(count)
    ]
    rows = [
        {
            "resource_type": "Task",
            "resource_id": f"bulk-{i}",
            "version_id": 1,
            "param": "identifier",
            "system": "https://example.org/bulk",
            "value": f"V-{i}",
            "low": None,
            "high": None,
            "number": None,
            "txid": 0,
            "seq": i + 1,
        }
        for i in range(count)
    ]
    async with write_transaction(engine) as conn:
        await conn.execute(insert(resource_t), resources)
        await conn.execute(insert(index_t), rows)
