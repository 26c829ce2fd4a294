"""The provider poll (owner + status + cursor), patient, date and worklist searches use indexes
on PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.search.execute import AccessFilter, SearchPage, allow_all, run_search
from service.search.query import parse_search
from service.settings import Settings
from service.storage.db import create_engine
from tests.conftest import TABLES
from tests.statements import sent_with_parameters

pytestmark = [pytest.mark.postgres, pytest.mark.performance_contract]

LOAD = """
WITH n AS (SELECT g, 'task-' || g AS id FROM generate_series(1, 20000) g)
, h AS (
  INSERT INTO resource_history
    (txid, resource_type, id, version_id, last_updated, method, deleted, raw)
  SELECT 1, 'Task', id, 1, now(), 'POST', false, '{}' FROM n RETURNING id, seq
)
, r AS (
  INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, raw)
  SELECT 'Task', id, 1, now(), false, '{"resourceType":"Task"}' FROM n RETURNING id
)
INSERT INTO search_index (resource_type, resource_id, version_id, param, system, value, txid, seq)
SELECT 'Task', n.id, 1, p.param, p.system, p.value, 1, h.seq FROM n JOIN h ON h.id = n.id
CROSS JOIN LATERAL (VALUES
  ('owner', 'Organization', 'Organization/org-' || (g % 1000)),
  ('status', NULL, CASE WHEN g % 3 = 0 THEN 'requested' ELSE 'completed' END),
  ('patient', 'Patient', 'Patient/p-' || (g % 5000)),
  ('subject', 'Patient', 'Patient/p-' || (g % 5000))
) AS p(param, system, value)
"""


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=postgres_url, _env_file=None))
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
    yield engine
    await engine.dispose()


async def search_statement(
    engine: AsyncEngine,
    params: list[tuple[str, str]],
    *,
    access: AccessFilter = allow_all,
    resource_type: str = "Task",
) -> tuple[SearchPage, str, Any]:
    """Run a search; its page, and the last statement it sent with its parameters."""
    with sent_with_parameters(engine) as captured:
        async with engine.connect() as conn:
            request = parse_search(
                resource_type, params, strict=True, default_count=50, max_count=1000
            )
            page = await run_search(conn, request, access=access)
    statement, parameters = captured[-1]
    return page, statement, parameters


async def _explain(engine: AsyncEngine, statement: str, parameters: Any, how: str = "") -> str:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert raw.driver_connection is not None
        rows = await raw.driver_connection.fetch(f"EXPLAIN {how}{statement}", *parameters)
    return "\n".join(r[0] for r in rows)


async def _load(
    engine: AsyncEngine, *, analyzed: tuple[str, ...] = (), unanalyzed: tuple[str, ...] = ()
) -> None:
    """LOAD and the ``analyzed`` statements, ANALYZE, then the ``unanalyzed`` ones: rows the
    statistics do not know of yet (they lag behind growth)."""
    async with engine.begin() as conn:
        for statement in (LOAD, *analyzed):
            await conn.execute(text(statement))
        for table in ("resource", "resource_history", "search_index"):
            await conn.execute(text(f"ANALYZE {table}"))
        for statement in unanalyzed:
            await conn.execute(text(statement))


def _most_rows(plan: str) -> int:
    """The most rows any node of an EXPLAIN ANALYZE plan produced."""
    return max(int(n) for n in re.findall(r"actual time=\S+ rows=(\d+)", plan))


async def _plans(engine: AsyncEngine, params: list[tuple[str, str]]) -> str:
    await _load(engine)
    _page, statement, parameters = await search_statement(engine, params)
    return await _explain(engine, statement, parameters)


async def test_poll_owner_status_cursor_uses_indexes(engine: AsyncEngine) -> None:
    plan = await _plans(
        engine,
        [("owner", "Organization/org-7"), ("status", "requested"), ("_cursor", "start")],
    )
    assert "Seq Scan on search_index" not in plan, plan
    assert "Seq Scan on resource_history" not in plan, plan
    assert "Index" in plan


async def test_owner_status_search_uses_indexes(engine: AsyncEngine) -> None:
    plan = await _plans(engine, [("owner", "Organization/org-7"), ("status", "requested")])
    assert "Seq Scan on search_index" not in plan, plan
    assert "Seq Scan on resource " not in plan + " ", plan


async def test_patient_search_uses_indexes(engine: AsyncEngine) -> None:
    plan = await _plans(engine, [("patient", "Patient/p-42")])
    assert "Seq Scan on search_index" not in plan, plan
    assert "Seq Scan on resource " not in plan + " ", plan


async def test_an_organizations_search_never_walks_everything_it_made(
    engine: AsyncEngine,
) -> None:
    """Tenancy is an OR of EXISTS checks. Unfenced, PostgreSQL may evaluate one as a hashed
    subplan: every row the organization ever created, collected on each of its searches
    (found by the referral benchmark: a jail's reads slowed as its referrals grew)."""
    from service.auth.principal import Principal
    from service.auth.scopes import ScopeSet
    from service.workflows.access import access_filter

    # The organization's 20,000 resources arrive after the last ANALYZE: the planner believes
    # the organization has created almost nothing.
    await _load(
        engine,
        unanalyzed=(
            "INSERT INTO search_index (resource_type, resource_id, version_id, param, value,"
            " txid, seq) SELECT 'Task', id, 1, '_creator-org', 'Organization/big', 1, 1"
            " FROM resource WHERE resource_type = 'Task'",
        ),
    )
    principal = Principal(
        client_id="c",
        organization="Organization/big",
        scopes=ScopeSet.parse("system/*.cruds"),
        is_admin=False,
        token_id=None,
        issuer="t",
    )
    # a search that an index answers in a few rows, as the organization
    page, statement, parameters = await search_statement(
        engine, [("patient", "Patient/p-77")], access=access_filter(principal, "s", base_url=None)
    )
    assert {m.id for m in page.matches} == {"task-77", "task-5077", "task-10077", "task-15077"}
    plan = await _explain(engine, statement, parameters, "ANALYZE ")
    assert "hashed SubPlan" not in plan, plan
    assert _most_rows(plan) <= 10, plan  # per-row probes, not 20,000 rows of the organization


async def test_date_search_uses_the_date_row_index(engine: AsyncEngine) -> None:
    """``ix_search_low`` and ``ix_search_high`` hold date rows only (partial indexes): a date
    condition must say so for the planner to use them."""
    await _load(
        engine,
        analyzed=(
            "INSERT INTO search_index (resource_type, resource_id, version_id, param, low,"
            " high, txid, seq) SELECT 'Task', id, 1, 'authored-on',"
            " timestamptz '2026-01-01' + (row_number() OVER (ORDER BY id)) * interval '1 min',"
            " timestamptz '2026-01-01' + (row_number() OVER (ORDER BY id)) * interval '1 min',"
            " 1, 1 FROM resource WHERE resource_type = 'Task'",
        ),
    )
    # 20,000 Tasks authored a minute apart from 2026-01-01T00:01
    page, _, _ = await search_statement(engine, [("authored-on", "lt2026-01-01T00:05:00Z")])
    assert len(page.matches) == 4
    page, statement, parameters = await search_statement(
        engine, [("authored-on", "sa2026-01-14T21:00:00Z")]
    )
    assert len(page.matches) == 20
    plan = await _explain(engine, statement, parameters)
    assert "ix_search_low" in plan, plan
    # From above (the end of each range): ix_search_high, read only where the matches are.
    for value in ("gt2026-01-14T21:00:00Z", "ge2026-01-14T21:00:01Z"):
        page, statement, parameters = await search_statement(engine, [("authored-on", value)])
        assert len(page.matches) == 20
        plan = await _explain(engine, statement, parameters, "ANALYZE ")
        assert "ix_search_high" in plan, plan
        assert _most_rows(plan) <= 100, plan  # not the 20,000 date rows of the type


async def test_period_search_uses_the_date_row_index(engine: AsyncEngine) -> None:
    """A Period parameter (Task ``period``) has open-ended values; they are stored as
    far-future ends, so ``ge`` is one range over ``ix_search_high`` (with ``OR high IS NULL``
    PostgreSQL walked every date row of the parameter)."""
    await _load(
        engine,
        analyzed=(
            # 20,000 closed periods a minute apart, and 50 open-ended ones from 2026-01-01
            "INSERT INTO search_index (resource_type, resource_id, version_id, param, low,"
            " high, txid, seq) SELECT 'Task', id, 1, 'period',"
            " timestamptz '2026-01-01' + (row_number() OVER (ORDER BY id)) * interval '1 min',"
            " CASE WHEN row_number() OVER (ORDER BY id) <= 50 THEN NULL ELSE"
            " timestamptz '2026-01-01' + (row_number() OVER (ORDER BY id)) * interval '1 min'"
            " END, 1, 1 FROM resource WHERE resource_type = 'Task'",
        ),
    )
    page, statement, parameters = await search_statement(
        engine, [("period", "ge2026-01-14T21:00:01Z"), ("_count", "500")]
    )
    assert len(page.matches) == 70  # the last 20 closed ones and the 50 open-ended ones
    plan = await _explain(engine, statement, parameters, "ANALYZE ")
    assert "ix_search_high" in plan, plan
    assert _most_rows(plan) <= 300, plan  # not the 20,000 date rows of the parameter


async def test_release_worklist_reads_only_the_window(engine: AsyncEngine) -> None:
    """The jail's worklist (requester + expected release between two instants, as
    ``service.features.referrals.list_referrals`` asks it) reads the window's referrals, not
    every referral the jail ever made: release windows are open-ended Periods."""
    await _load(
        engine,
        analyzed=(
            "INSERT INTO search_index (resource_type, resource_id, version_id, param, value,"
            " low, high, txid, seq) SELECT 'ServiceRequest', 'sr-' || g, 1, p.param, p.value,"
            " p.low, NULL, 1, 1 FROM generate_series(1, 20000) g CROSS JOIN LATERAL (VALUES"
            " ('requester', 'Organization/jail', NULL::timestamptz),"
            " ('occurrence', NULL, timestamptz '2026-01-01' + g * interval '1 hour'))"
            " AS p(param, value, low)",
            "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, raw)"
            " SELECT 'ServiceRequest', 'sr-' || g, 1, now(), false, '{}'"
            " FROM generate_series(1, 20000) g",
        ),
    )
    # Releases an hour apart for 20,000 hours from 2026-01-01T01:00 (the data is fixed, not
    # relative to now): the window below is the last three days and a few hours, as a jail's
    # are on the day it looks (few releases are planned further ahead). It holds 72 of them.
    from service.features.referrals import worklist_search

    window = worklist_search(
        "Organization/jail",
        datetime(2028, 4, 10, 1, tzinfo=UTC),  # calendar: fixed
        datetime(2028, 4, 13, 0, 59, tzinfo=UTC),  # calendar: fixed
    )
    page, statement, parameters = await search_statement(
        engine, window, resource_type="ServiceRequest"
    )
    assert len(page.matches) == 72
    plan = await _explain(engine, statement, parameters, "ANALYZE ")
    assert _most_rows(plan) <= 300, plan  # not the jail's 20,000 referrals


async def test_probes_of_a_type_newer_than_its_statistics_stay_probes(
    engine: AsyncEngine,
) -> None:
    """A type that grew after the last ANALYZE (the statistics say it has no rows) must still
    be probed by the version's own index rows: PostgreSQL otherwise plans a walk over every row
    of the type and parameter (found by the referral benchmark: each visibility check of a
    jail's new Patient walked every Patient the jail had created, each identifier look-up every
    identifier of the type)."""
    from service.storage import repository as repo
    from service.workflows.access import tenancy_condition
    from service.workflows.resources import CURRENT_COLS

    # 5,000 Patients of one organization, unknown to the statistics
    await _load(
        engine,
        unanalyzed=(
            "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, raw)"
            " SELECT 'Patient', 'pat-' || g, 1, now(), false, '{}'"
            " FROM generate_series(1, 5000) g",
            "INSERT INTO search_index (resource_type, resource_id, version_id, param, system,"
            " value, txid, seq) SELECT 'Patient', 'pat-' || g, 1, p.param, p.system, p.value,"
            " 1, 1 FROM generate_series(1, 5000) g CROSS JOIN LATERAL (VALUES"
            " ('_creator-org', NULL, 'Organization/jail'),"
            " ('identifier', 'urn:jail:person-id', 'P-' || g)) AS p(param, system, value)",
        ),
    )
    condition = tenancy_condition("Patient", CURRENT_COLS, "Organization/jail")
    with sent_with_parameters(engine) as captured:
        async with engine.connect() as conn:
            visible = await repo.which_pass(conn, [("Patient", "pat-4321")], lambda _t: condition)
            found = await repo.versions_with_identifiers(
                conn, "Patient", [("urn:jail:person-id", "P-77"), ("urn:jail:booking", "B-1")]
            )
    assert visible == {("Patient", "pat-4321"): True}
    assert found == [(0, "pat-77", 1)]
    for statement, parameters in captured:
        plan = await _explain(engine, statement, parameters, "ANALYZE ")
        most = _most_rows(plan)
        removed = sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan))
        assert most <= 10 and removed <= 50, plan
