"""Insert-or-replace of rows by primary key, on both dialects (``INSERT ... ON CONFLICT``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection


async def upsert(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], key: str
) -> None:
    """Write ``rows``, replacing the ones whose ``key`` is already stored: two transactions
    writing the same rows at once both succeed (the later one's values stay), where a delete
    and an insert would fail the later one on the primary key."""
    if not rows:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(table)
    columns = [c.name for c in table.columns if c.name != key]
    stmt = stmt.on_conflict_do_update(
        index_elements=[key], set_={c: stmt.excluded[c] for c in columns}
    )
    await conn.execute(stmt, list(rows))
