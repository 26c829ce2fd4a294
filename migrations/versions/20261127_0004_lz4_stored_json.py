"""PostgreSQL: stored JSON compressed with lz4 instead of pglz

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 08:30:00

PostgreSQL compresses a value over ~2 KB before storing it out of line (TOAST), by default with
pglz. A page's AuditEvent (~26 KB of JSON, stored in ``resource`` and ``resource_history``)
cost PostgreSQL ~125 µs per copy to compress with pglz and ~20 µs with lz4 (measured on the
benchmark machine), and lz4 also decompresses faster on every read of a large resource.

Only the column setting changes: no table is rewritten, so this is instant on a large database;
values written before keep pglz and stay readable. Skipped on SQLite, and on a PostgreSQL
server built without lz4 (or older than 14), where pglz stays.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("resource", "raw"),
    ("resource", "content"),
    ("resource_history", "raw"),
    ("idempotency_record", "body"),
)


def _server_has_lz4() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    values = bind.execute(
        sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return values is not None and "lz4" in values


def _set(method: str) -> None:
    if not _server_has_lz4():
        return
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")


def upgrade() -> None:
    _set("lz4")


def downgrade() -> None:
    _set("pglz")
