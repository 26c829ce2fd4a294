"""idempotency_record: an index by age, for purging expired responses

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 10:30:00

The first response to each Idempotency-Key was kept for ever, patient data included. It is now
kept ``HANDOFF_IDEMPOTENCY_RETENTION_HOURS`` (default 24) and purged in batches by age, which
this index serves. On PostgreSQL it is built CONCURRENTLY (writes go on); if the build is
interrupted, drop the INVALID index left behind (``DROP INDEX ix_idempotency_created``) and
run ``handoff migrate`` again.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_idempotency_created",
                "idempotency_record",
                ["created"],
                postgresql_concurrently=True,
            )
        return
    with op.batch_alter_table("idempotency_record") as batch_op:
        batch_op.create_index("ix_idempotency_created", ["created"])


def downgrade() -> None:
    with op.batch_alter_table("idempotency_record") as batch_op:
        batch_op.drop_index("ix_idempotency_created")
