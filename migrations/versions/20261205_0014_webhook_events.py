"""subscription_event.event_type: what a webhook event announces

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 14:00:00

A FHIR Subscription's event is a resource version (its notification says what the version is);
a /v1 webhook's event is also a kind of change (``referral.accepted``, ``referral.rejected``,
``referral.milestone``, ``referral.release_imminent``), decided when the change is matched.
Existing events are FHIR Subscription events: the column stays empty for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscription_event") as batch:
        batch.add_column(sa.Column("event_type", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscription_event") as batch:
        batch.drop_column("event_type")
