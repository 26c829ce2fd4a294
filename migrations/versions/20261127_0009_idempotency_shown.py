"""idempotency_record.shown: the versions the first response named, for the replay's audit

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 16:00:00

A replayed response discloses again what the first one did (a JMS retrying POST /v1/referrals
gets the referral, with the person, once more), and 42 CFR Part 2 wants each disclosure in the
audit trail. The first request now keeps the (type, id, version) of what it wrote or read with
its response; a replay's AuditEvent names them. Rows kept before this have none (NULL): their
replays are audited as before, without entities, until they expire.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: a catalog change on PostgreSQL, no table rewrite.
    with op.batch_alter_table("idempotency_record") as batch_op:
        batch_op.add_column(sa.Column("shown", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_record") as batch_op:
        batch_op.drop_column("shown")
