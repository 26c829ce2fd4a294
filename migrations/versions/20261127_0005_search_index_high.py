"""search_index: ix_search_high, date rows by the end of their range

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 08:00:00

``gt``/``ge``/``eb`` date searches compare the end of each value's range (``high``), which no
index held: a search such as ``AuditEvent?date=ge2026-11-01`` (an auditor's "since the first of
the month") read every date row of the type. Date rows only, like ``ix_search_low``.

On PostgreSQL the index is built CONCURRENTLY: writes go on while it builds (minutes on a large
table). If the build is interrupted, PostgreSQL leaves an INVALID index behind: drop it
(``DROP INDEX ix_search_high``) and run ``handoff migrate`` again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DATE_ROWS = sa.text("value IS NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_search_high",
                "search_index",
                ["resource_type", "param", "high"],
                unique=False,
                postgresql_where=_DATE_ROWS,
                postgresql_concurrently=True,
            )
        return
    with op.batch_alter_table("search_index") as batch_op:
        batch_op.create_index(
            "ix_search_high",
            ["resource_type", "param", "high"],
            unique=False,
            sqlite_where=_DATE_ROWS,
        )


def downgrade() -> None:
    with op.batch_alter_table("search_index") as batch_op:
        batch_op.drop_index("ix_search_high")
