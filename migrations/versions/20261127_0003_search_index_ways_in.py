"""search_index: four secondary indexes, each for one way in

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 03:50:00

- ix_search_low holds date rows only (the only rows without a value);
- ix_search_system_value holds rows with a system only (token system|code, identifiers);
- ix_search_resource leads with resource_id (per-version probes): no other index does, so a
  type whose statistics lag behind its growth cannot be walked row by row instead;
- ix_search_value goes: its (type, param, value) prefix is ix_search_feed's, its probes are
  ix_search_resource's.
Every index row written maintains two indexes fewer than before (one for most rows).
On a large table this rebuilds two indexes: minutes, during which writes wait.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DATE_ROWS = sa.text("value IS NULL")
_WITH_SYSTEM = sa.text("system IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("search_index") as batch_op:
        batch_op.drop_index("ix_search_value")
        batch_op.drop_index("ix_search_low")
        batch_op.drop_index("ix_search_system_value")
        batch_op.drop_index("ix_search_resource")
        batch_op.create_index(
            "ix_search_low",
            ["resource_type", "param", "low"],
            unique=False,
            postgresql_where=_DATE_ROWS,
            sqlite_where=_DATE_ROWS,
        )
        batch_op.create_index(
            "ix_search_system_value",
            ["resource_type", "param", "system", "value"],
            unique=False,
            postgresql_where=_WITH_SYSTEM,
            sqlite_where=_WITH_SYSTEM,
        )
        batch_op.create_index(
            "ix_search_resource", ["resource_id", "version_id", "param", "value"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("search_index") as batch_op:
        batch_op.drop_index("ix_search_resource")
        batch_op.drop_index("ix_search_system_value")
        batch_op.drop_index("ix_search_low")
        batch_op.create_index(
            "ix_search_resource", ["resource_type", "resource_id", "version_id"], unique=False
        )
        batch_op.create_index(
            "ix_search_system_value", ["resource_type", "param", "system", "value"], unique=False
        )
        batch_op.create_index("ix_search_low", ["resource_type", "param", "low"], unique=False)
        batch_op.create_index(
            "ix_search_value",
            ["resource_type", "param", "value", "resource_id", "version_id"],
            unique=False,
        )
