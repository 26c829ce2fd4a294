"""search_index: no surrogate primary key

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 09:30:00

Nothing reads or addresses a single ``search_index`` row: rows are found by value, by version or
by date. The ``row_id`` key and its index cost ~3.3 µs of PostgreSQL time for every row written
(a provider's page AuditEvent writes ~107) and an index as large as the rest of the row's keys.

On PostgreSQL dropping the column is a catalog change (the key's index goes with it): a brief
exclusive lock, no rewrite. On SQLite the table is rebuilt. The downgrade adds the key back
(a rewrite on PostgreSQL).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("search_index", "row_id")
        return
    with op.batch_alter_table("search_index", recreate="always") as batch_op:
        batch_op.drop_column("row_id")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE search_index ADD COLUMN row_id BIGSERIAL PRIMARY KEY")
        return
    with op.batch_alter_table("search_index", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("row_id", sa.Integer(), nullable=True))
        batch_op.create_primary_key("search_index_pkey", ["row_id"])
