"""search_index: open Period ends stored as far-past / far-future instants, not NULL

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 10:00:00

A Period without a start or an end was stored with a NULL ``low`` or ``high``, so every
``gt``/``ge``/``lt``/``le`` search on a parameter that has Periods (Task ``period``,
ServiceRequest ``occurrence``, Observation and Procedure ``date``, Consent ``period``, …) had
to say ``OR high IS NULL`` and could not use ``ix_search_low``/``ix_search_high``: PostgreSQL
walked every date row of the parameter. Open ends are now ``0001-01-01T00:00:00Z`` and
``9999-12-31T23:59:59.999999Z`` (``service.fhir.dates.OPEN_START``/``OPEN_END``).

Existing rows are converted here. On PostgreSQL a trigger also converts rows that replicas still
running the previous version write during a rolling upgrade (they store NULL ends); it costs one
cheap ``WHEN`` test per inserted row and can be dropped by a later migration once no replica
older than this one can run. SQLite runs one process: no trigger.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As service.fhir.dates (a migration must not import the application: it may change).
_PG_START = "timestamptz '0001-01-01 00:00:00+00'"
_PG_END = "timestamptz '9999-12-31 23:59:59.999999+00'"
# SQLite stores UTC instants as naive text in SQLAlchemy's format.
_SQLITE_START = "'0001-01-01 00:00:00.000000'"
_SQLITE_END = "'9999-12-31 23:59:59.999999'"


def _ends() -> tuple[str, str]:
    if op.get_bind().dialect.name == "postgresql":
        return _PG_START, _PG_END
    return _SQLITE_START, _SQLITE_END


def upgrade() -> None:
    start, end = _ends()
    # Date rows are the only rows without a value (see ix_search_low / ix_search_high).
    op.execute(
        f"UPDATE search_index SET low = coalesce(low, {start}), high = coalesce(high, {end})"
        " WHERE value IS NULL AND (low IS NULL OR high IS NULL)"
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION search_index_open_ends() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.low := coalesce(NEW.low, {start});
            NEW.high := coalesce(NEW.high, {end});
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER search_index_open_ends BEFORE INSERT ON search_index
        FOR EACH ROW WHEN (NEW.value IS NULL AND (NEW.low IS NULL OR NEW.high IS NULL))
        EXECUTE FUNCTION search_index_open_ends()
        """
    )


def downgrade() -> None:
    start, end = _ends()
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER search_index_open_ends ON search_index")
        op.execute("DROP FUNCTION search_index_open_ends()")
    op.execute(
        f"UPDATE search_index SET low = CASE WHEN low = {start} THEN NULL ELSE low END,"
        f" high = CASE WHEN high = {end} THEN NULL ELSE high END"
        f" WHERE value IS NULL AND (low = {start} OR high = {end})"
    )
