"""measure_release, measure_referral, measure_event: program measures' maintained facts

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 17:00:00

The facts are kept current by a write rule (service.features.measures); an existing database
fills them once with ``handoff measures rebuild``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.storage.types import UtcDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "measure_release",
        sa.Column("release_id", sa.String(64), primary_key=True),
        sa.Column("patient", sa.String(128), nullable=False),
        sa.Column("organization", sa.String(128), nullable=True),
        sa.Column("facility", sa.String(128), nullable=True),
        sa.Column("intercept", sa.String(8), nullable=True),
        sa.Column("booked_at", UtcDateTime(), nullable=False),
        sa.Column("released_at", UtcDateTime(), nullable=False),
        sa.Column("release_month", sa.String(7), nullable=False),
        sa.Column("release_type", sa.String(16), nullable=False),
        sa.Column("stay_length", sa.String(16), nullable=False),
        sa.Column("stay_hours", sa.Float(), nullable=False),
        sa.Column("sex", sa.String(16), nullable=False),
        sa.Column("age_band", sa.String(16), nullable=False),
        sa.Column("at_risk", sa.Integer(), nullable=False),
        sa.Column("screened_at", UtcDateTime(), nullable=True),
        sa.Column("screened_24h", sa.Integer(), nullable=False),
        sa.Column("screened_72h", sa.Integer(), nullable=False),
        sa.Column("educated", sa.Integer(), nullable=False),
        sa.Column("naloxone_in_hand", sa.Integer(), nullable=False),
        sa.Column("first_contact_at", UtcDateTime(), nullable=True),
        sa.Column("contact_hours", sa.Float(), nullable=True),
        sa.Column("contacted_24h", sa.Integer(), nullable=False),
        sa.Column("contacted_72h", sa.Integer(), nullable=False),
        sa.Column("treatment_started_at", UtcDateTime(), nullable=True),
        sa.Column("treatment_14d", sa.Integer(), nullable=False),
        sa.Column("engaged_34d", sa.Integer(), nullable=False),
        sa.Column("deceased_at", UtcDateTime(), nullable=True),
        sa.Column("rebooked_at", UtcDateTime(), nullable=True),
        sa.Column("rebooked_12m", sa.Integer(), nullable=False),
        sa.Column("referred", sa.Integer(), nullable=False),
        sa.Column("a_treatment", sa.Integer(), nullable=False),
        sa.Column("a_harm", sa.Integer(), nullable=False),
        sa.Column("a_peer", sa.Integer(), nullable=False),
        sa.Column("a_any", sa.Integer(), nullable=False),
    )
    op.create_index("ix_measure_release_released", "measure_release", ["released_at"])
    op.create_index("ix_measure_release_patient", "measure_release", ["patient"])
    op.create_index("ix_measure_release_org", "measure_release", ["organization", "released_at"])
    op.create_table(
        "measure_referral",
        sa.Column("referral_id", sa.String(64), primary_key=True),
        sa.Column("release_id", sa.String(64), nullable=False),
        sa.Column("patient", sa.String(128), nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("intercept", sa.String(8), nullable=True),
        sa.Column("requester", sa.String(128), nullable=True),
        sa.Column("performer", sa.String(128), nullable=True),
        sa.Column("accepted_at", UtcDateTime(), nullable=True),
        sa.Column("accepted_before_release", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
    )
    op.create_index("ix_measure_referral_release", "measure_referral", ["release_id", "category"])
    op.create_index("ix_measure_referral_patient", "measure_referral", ["patient"])
    op.create_index("ix_measure_referral_requester", "measure_referral", ["requester"])
    op.create_index("ix_measure_referral_performer", "measure_referral", ["performer"])
    op.create_table(
        "measure_event",
        sa.Column("event_id", sa.String(160), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("organization", sa.String(128), nullable=True),
        sa.Column("facility", sa.String(128), nullable=True),
        sa.Column("intercept", sa.String(8), nullable=True),
        sa.Column("quantity", sa.Float(), nullable=False),
    )
    op.create_index("ix_measure_event_kind_at", "measure_event", ["kind", "occurred_at"])


def downgrade() -> None:
    op.drop_table("measure_event")
    op.drop_table("measure_referral")
    op.drop_table("measure_release")
