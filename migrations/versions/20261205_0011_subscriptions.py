"""notifications: subscription delivery state, per-subscription events, the feed cursor

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:00:00

FHIR Subscriptions (R4 Backport IG) are delivered by a worker that reads the
change feed (``resource_history`` in commit order) from ``subscription_cursor``, numbers each
matching event per subscription in ``subscription_event`` and delivers under a per-subscription
lease in ``subscription_state``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.storage.types

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    utc = service.storage.types.UtcDateTime
    op.create_table(
        "subscription_state",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("organization", sa.String(length=128), nullable=True),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("events_count", sa.BigInteger(), nullable=False),
        sa.Column("delivered_through", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", utc(timezone=True), nullable=False),
        sa.Column("last_sent_at", utc(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", utc(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("subscription_state", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subscription_state_due", ["status", "next_attempt_at"], unique=False
        )
    op.create_table(
        "subscription_event",
        sa.Column("subscription_id", sa.String(length=64), nullable=False),
        sa.Column("event_number", sa.BigInteger(), nullable=False),
        sa.Column("recorded", utc(timezone=True), nullable=False),
        sa.Column("focus_type", sa.String(length=64), nullable=False),
        sa.Column("focus_id", sa.String(length=64), nullable=False),
        sa.Column("focus_version", sa.Integer(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("subscription_id", "event_number"),
    )
    with op.batch_alter_table("subscription_event", schema=None) as batch_op:
        batch_op.create_index("ix_subscription_event_recorded", ["recorded"], unique=False)
    op.create_table(
        "subscription_cursor",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("scanned_at", utc(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("subscription_cursor")
    with op.batch_alter_table("subscription_event", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_event_recorded")
    op.drop_table("subscription_event")
    with op.batch_alter_table("subscription_state", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_state_due")
    op.drop_table("subscription_state")
