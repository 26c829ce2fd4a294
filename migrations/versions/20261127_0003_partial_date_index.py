"""ix_search_low holds date rows only

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 03:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DATE_ROWS = sa.text("value IS NULL")


def upgrade() -> None:
    # Date rows are the only ones without a value (search.extract); every other index row
    # stops paying for this index. Searches name the predicate (search.query).
    with op.batch_alter_table("search_index") as batch_op:
        batch_op.drop_index("ix_search_low")
        batch_op.create_index(
            "ix_search_low",
            ["resource_type", "param", "low"],
            unique=False,
            postgresql_where=_DATE_ROWS,
            sqlite_where=_DATE_ROWS,
        )


def downgrade() -> None:
    with op.batch_alter_table("search_index") as batch_op:
        batch_op.drop_index("ix_search_low")
        batch_op.create_index("ix_search_low", ["resource_type", "param", "low"], unique=False)
