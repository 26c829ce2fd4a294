"""search_index: the ``_discloser`` rows of Consents (who a consent authorizes to disclose)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 08:00:00

42 CFR Part 2 §2.31: a consent authorizes disclosure by the program that holds the records and
the patient's signed consent. A Consent now authorizes disclosing the records of each custodian
(``Consent.organization``) that recorded it itself, or of every custodian when an administrator
recorded it; the server writes one ``_discloser`` index row per such custodian with each
version. Existing versions whose recorder (``_creator-org``) is their custodian get their row
here. Consents an administrator recorded before this, or that a recipient recorded about
another program's records, get none: they authorize nothing until recorded again.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "INSERT INTO search_index (resource_type, resource_id, version_id, param, system, value,"
        " low, high, number, txid, seq)"
        " SELECT o.resource_type, o.resource_id, o.version_id, '_discloser', NULL, o.value,"
        " NULL, NULL, NULL, o.txid, o.seq"
        " FROM search_index o JOIN search_index c"
        " ON c.resource_type = o.resource_type AND c.resource_id = o.resource_id"
        " AND c.version_id = o.version_id AND c.param = '_creator-org' AND c.value = o.value"
        " WHERE o.resource_type = 'Consent' AND o.param = 'organization'"
        " AND NOT EXISTS (SELECT 1 FROM search_index d WHERE d.resource_type = 'Consent'"
        " AND d.resource_id = o.resource_id AND d.version_id = o.version_id"
        " AND d.param = '_discloser' AND d.value = o.value)"
    )


def downgrade() -> None:
    op.execute("DELETE FROM search_index WHERE resource_type = 'Consent' AND param = '_discloser'")
