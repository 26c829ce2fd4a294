"""resources

Revision ID: 0001
Revises:
Create Date: 2026-11-26 19:56:12.291279
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import service.storage.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "idempotency_record",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created", service.storage.types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "key"),
    )
    op.create_table(
        "resource",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", service.storage.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column(
            "content",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("resource_type", "id"),
    )
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.create_index(
            "ix_resource_type_updated", ["resource_type", "last_updated", "id"], unique=False
        )

    op.create_table(
        "resource_history",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("txid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", service.storage.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("resource_type", "id", "version_id", name="uq_history_version"),
    )
    with op.batch_alter_table("resource_history", schema=None) as batch_op:
        batch_op.create_index("ix_history_txid_seq", ["txid", "seq"], unique=False)
        batch_op.create_index(
            "ix_history_type_txid_seq", ["resource_type", "txid", "seq"], unique=False
        )

    op.create_table(
        "search_index",
        sa.Column("row_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("value", sa.String(length=512), nullable=True),
        sa.Column("low", service.storage.types.UtcDateTime(timezone=True), nullable=True),
        sa.Column("high", service.storage.types.UtcDateTime(timezone=True), nullable=True),
        sa.Column("number", sa.Float(), nullable=True),
        sa.Column("txid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("row_id"),
    )
    with op.batch_alter_table("search_index", schema=None) as batch_op:
        batch_op.create_index(
            "ix_search_feed", ["resource_type", "param", "value", "txid", "seq"], unique=False
        )
        batch_op.create_index("ix_search_low", ["resource_type", "param", "low"], unique=False)
        batch_op.create_index(
            "ix_search_resource", ["resource_type", "resource_id", "version_id"], unique=False
        )
        batch_op.create_index(
            "ix_search_system_value", ["resource_type", "param", "system", "value"], unique=False
        )
        batch_op.create_index(
            "ix_search_value",
            ["resource_type", "param", "value", "resource_id", "version_id"],
            unique=False,
        )


def downgrade() -> None:

    with op.batch_alter_table("search_index", schema=None) as batch_op:
        batch_op.drop_index("ix_search_value")
        batch_op.drop_index("ix_search_system_value")
        batch_op.drop_index("ix_search_resource")
        batch_op.drop_index("ix_search_low")
        batch_op.drop_index("ix_search_feed")

    op.drop_table("search_index")
    with op.batch_alter_table("resource_history", schema=None) as batch_op:
        batch_op.drop_index("ix_history_type_txid_seq")
        batch_op.drop_index("ix_history_txid_seq")

    op.drop_table("resource_history")
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.drop_index("ix_resource_type_updated")

    op.drop_table("resource")
    op.drop_table("idempotency_record")
