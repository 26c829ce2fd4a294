"""Migrations: upgrade from empty, downgrade, upgrade again; no drift against the models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.storage.migrate import downgrade, head_revision, upgrade
from service.storage.tables import metadata


def _diff(url: str) -> list:
    async def run() -> list:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _rows(url: str, sql: str) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return list(await conn.execute(text(sql)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _execute(url: str, sql: str) -> None:
    async def run() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run())


def _tables(url: str) -> set[str]:
    if url.startswith("sqlite"):
        sql = "SELECT name FROM sqlite_master WHERE type='table'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    return {r[0] for r in _rows(url, sql)}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    url: str = request.getfixturevalue("postgres_url")
    downgrade(url)  # the session database starts migrated; take it back to empty
    request.addfinalizer(lambda: upgrade(url))
    return url


def test_upgrade_downgrade_upgrade_and_no_drift(fresh_url: str) -> None:
    upgrade(fresh_url)
    assert {"resource", "resource_history", "search_index"} <= _tables(fresh_url)
    assert _diff(fresh_url) == [], "models and migrations disagree: write a migration"
    downgrade(fresh_url)
    assert _tables(fresh_url) <= {"alembic_version"}
    upgrade(fresh_url)
    assert _diff(fresh_url) == []
    assert head_revision() is not None


def _compression(url: str) -> dict[tuple[str, str], str]:
    rows = _rows(
        url,
        "SELECT c.relname, a.attname, a.attcompression::text FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relname IN ('resource', 'resource_history', 'idempotency_record') "
        "AND a.attname IN ('raw', 'content', 'body') "
        "AND c.relnamespace = current_schema()::regnamespace",
    )
    return {(r[0], r[1]): r[2] for r in rows}


@pytest.mark.postgres
def test_stored_json_is_compressed_with_lz4_on_postgresql(fresh_url: str) -> None:
    """A page's AuditEvent (~26 KB) costs PostgreSQL ~6x less CPU to compress with lz4."""
    if not fresh_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    upgrade(fresh_url)
    assert set(_compression(fresh_url).values()) == {"l"}  # l = lz4, p = pglz
    downgrade(fresh_url, "0003")
    assert set(_compression(fresh_url).values()) == {"p"}
    upgrade(fresh_url)
    assert set(_compression(fresh_url).values()) == {"l"}


def _columns(url: str, table: str) -> set[str]:
    if url.startswith("sqlite"):
        return {r[1] for r in _rows(url, f"PRAGMA table_info({table})")}
    sql = f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
    return {r[0] for r in _rows(url, sql)}


def test_search_index_loses_its_surrogate_key_and_keeps_its_rows(fresh_url: str) -> None:
    """0006 drops ``search_index.row_id`` (nothing addresses one row; it cost every row
    written); existing rows stay, and the downgrade numbers them again."""
    upgrade(fresh_url, "0005")
    assert "row_id" in _columns(fresh_url, "search_index")
    insert = (
        "INSERT INTO search_index (resource_type, resource_id, version_id, param, value, txid,"
        " seq) VALUES ('Task', 't1', 1, 'status', 'requested', 0, 1)"
    )
    _execute(fresh_url, insert)
    upgrade(fresh_url)
    assert "row_id" not in _columns(fresh_url, "search_index")
    assert _rows(fresh_url, "SELECT resource_id, value FROM search_index") == [("t1", "requested")]
    _execute(fresh_url, insert.replace("'t1'", "'t2'"))
    downgrade(fresh_url, "0005")
    numbered = _rows(fresh_url, "SELECT resource_id, row_id FROM search_index ORDER BY row_id")
    assert [r[0] for r in numbered] == ["t1", "t2"] and all(r[1] is not None for r in numbered)
    upgrade(fresh_url)


def test_open_period_ends_become_instants_and_back(fresh_url: str) -> None:
    """0007 stores open Period ends as far-past / far-future instants (so date searches use
    their indexes); on PostgreSQL a trigger converts what an older replica still writes."""
    upgrade(fresh_url, "0006")
    insert = (
        "INSERT INTO search_index (resource_type, resource_id, version_id, param, low, high,"
        " txid, seq) VALUES ('Task', '{id}', 1, 'period', {low}, {high}, 0, 1)"
    )
    day = (
        "'2026-11-10 00:00:00+00'"
        if fresh_url.startswith("postgresql")
        else ("'2026-11-10 00:00:00.000000'")
    )
    _execute(fresh_url, insert.format(id="open-end", low=day, high="NULL"))
    _execute(fresh_url, insert.format(id="open-start", low="NULL", high=day))
    upgrade(fresh_url)
    ends = "SELECT resource_id, low, high FROM search_index ORDER BY resource_id"

    def years() -> list[tuple[str, int, int]]:
        return [(r[0], _year(r[1]), _year(r[2])) for r in _rows(fresh_url, ends)]

    assert years() == [("open-end", 2026, 9999), ("open-start", 1, 2026)]
    if fresh_url.startswith("postgresql"):  # a replica of the previous version writes NULL
        _execute(fresh_url, insert.format(id="written-late", low=day, high="NULL"))
        assert years()[-1] == ("written-late", 2026, 9999)
    downgrade(fresh_url, "0006")
    open_end, open_start = _rows(fresh_url, ends)[:2]
    assert open_end[1] is not None and open_end[2] is None
    assert open_start[1] is None and open_start[2] is not None
    upgrade(fresh_url)


def _year(value: object) -> int:
    if value is None:
        return 0
    return int(str(value)[:4]) if isinstance(value, str) else value.year  # type: ignore[attr-defined]


def test_consents_recorded_by_their_custodian_gain_a_discloser(fresh_url: str) -> None:
    """0010: a Consent authorizes disclosure by a custodian that recorded it; existing
    versions get their ``_discloser`` row, a recipient's copy gets none."""
    upgrade(fresh_url, "0009")
    insert = (
        "INSERT INTO search_index (resource_type, resource_id, version_id, param, value,"
        " txid, seq) VALUES ('Consent', '{id}', 1, '{param}', '{value}', 0, 1)"
    )
    for rid, custodian, recorder in (
        ("held", "Organization/health", "Organization/health"),
        ("copy", "Organization/health", "Organization/otp"),
    ):
        _execute(fresh_url, insert.format(id=rid, param="organization", value=custodian))
        _execute(fresh_url, insert.format(id=rid, param="_creator-org", value=recorder))
    upgrade(fresh_url)
    disclosers = "SELECT resource_id, value FROM search_index WHERE param = '_discloser' ORDER BY 1"
    assert [tuple(r) for r in _rows(fresh_url, disclosers)] == [("held", "Organization/health")]
    downgrade(fresh_url, "0009")
    assert _rows(fresh_url, disclosers) == []
    upgrade(fresh_url)


def test_directory_parameters_are_indexed_for_existing_records(fresh_url: str) -> None:
    """0013: a Location and a HealthcareService written before get rows for the directory's
    new parameters (near, address-state, characteristic...), once."""
    upgrade(fresh_url, "0010")
    location = (
        '{"resourceType":"Location","id":"site","status":"active",'
        '"address":{"city":"Riverbend","state":"OH"},'
        '"position":{"latitude": 39.97,"longitude": -82.99}}'
    )
    service = (
        '{"resourceType":"HealthcareService","id":"svc","characteristic":[{"coding":[{"system":'
        '"https://handoff.dev/fhir/CodeSystem/directory-characteristic","code":'
        '"accepting-new-patients"}]}],"eligibility":[{"comment":"Adults"}]}'
    )
    for rtype, rid, raw in (("Location", "site", location), ("HealthcareService", "svc", service)):
        _execute(
            fresh_url,
            "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, raw)"
            f" VALUES ('{rtype}', '{rid}', 1, '2026-01-01 00:00:00', false, '{raw}')",
        )
        _execute(
            fresh_url,
            "INSERT INTO resource_history (txid, resource_type, id, version_id, last_updated,"
            f" method, deleted, raw) VALUES (0, '{rtype}', '{rid}', 1, '2026-01-01 00:00:00',"
            f" 'PUT', false, '{raw}')",
        )
    upgrade(fresh_url)
    upgrade(fresh_url, "0010")
    downgrade(fresh_url, "0010")
    upgrade(fresh_url)
    rows = "SELECT param, system, value, number FROM search_index ORDER BY 1, 2"
    assert [tuple(r) for r in _rows(fresh_url, rows)] == [
        ("address", "OH", "oh", None),
        ("address", "Riverbend", "riverbend", None),
        ("address-state", "OH", "oh", None),
        (
            "characteristic",
            "https://handoff.dev/fhir/CodeSystem/directory-characteristic",
            "accepting-new-patients",
            None,
        ),
        ("eligibility", "Adults", "adults", None),
        ("near", "latitude", "39.97", 39.97),
        ("near", "longitude", "-82.99", -82.99),
        ("status", None, "active", None),
    ]
