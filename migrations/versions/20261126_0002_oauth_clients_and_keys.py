"""oauth clients and keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 19:59:30.473027
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.storage.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "oauth_client",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("organization", sa.String(length=128), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.String(length=255), nullable=True),
        sa.Column("jwks", sa.JSON(), nullable=True),
        sa.Column("jwks_uri", sa.String(length=1024), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created", service.storage.types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id"),
    )
    op.create_table(
        "signing_key_ring",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ring", sa.JSON(), nullable=False),
        sa.Column("updated", service.storage.types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "used_assertion",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", service.storage.types.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti"),
    )
    with op.batch_alter_table("used_assertion", schema=None) as batch_op:
        batch_op.create_index("ix_used_assertion_expires", ["expires_at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("used_assertion", schema=None) as batch_op:
        batch_op.drop_index("ix_used_assertion_expires")

    op.drop_table("used_assertion")
    op.drop_table("signing_key_ring")
    op.drop_table("oauth_client")
