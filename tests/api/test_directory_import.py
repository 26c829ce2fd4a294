"""`handoff directory import`: an Open Referral HSDS 3.0 package into the directory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.features.directory.hsds import PackageError, resource_id
from service.features.directory.importer import ImportSummary, import_package
from service.storage import repository as repo
from service.workflows.access import CREATOR_PARAM

SAMPLE = Path(__file__).parent.parent / "data" / "hsds"
SOURCE = "riverbend-211"
BUPRENORPHINE_SERVICE = "9c4f5dab-4e0a-4f84-8a5b-3d4e5f6a7b01"
PEER_SERVICE = "9c4f5dab-4e0a-4f84-8a5b-3d4e5f6a7b03"
WESTGATE = "7a2d3b8f-2c8e-4d62-8e3f-1b2c3d4e5f02"
JAIL = (39.9612, -82.9988)


def package(tmp_path: Path) -> Path:
    folder = tmp_path / "hsds"
    shutil.copytree(SAMPLE, folder)
    return folder


def edit(folder: Path, table: str, change: Any) -> None:
    """Rewrite ``table``'s rows through ``change(rows) -> rows``."""
    path = folder / f"{table}.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    rows = change(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


async def run(
    app: Any, engine: AsyncEngine, folder: Path, owner: str | None = None
) -> ImportSummary:
    return await import_package(
        engine, app.state.settings, app.state.rules, path=folder, source=SOURCE, owner=owner
    )


async def count(client: httpx.AsyncClient, rtype: str, **params: str) -> int:
    r = await client.get(f"/fhir/{rtype}", params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def sid(hsds_id: str) -> str:
    return resource_id(SOURCE, "service", hsds_id)


async def test_import_maps_and_twice_duplicates_nothing(
    app: Any, engine: AsyncEngine, client: httpx.AsyncClient, org_client: Any, tmp_path: Path
) -> None:
    folder = package(tmp_path)
    first = await run(app, engine, folder)
    assert (
        first.added["Organization"],
        first.added["Location"],
        first.added["HealthcareService"],
    ) == (2, 3, 3)
    r = await client.get(f"/fhir/HealthcareService/{sid(BUPRENORPHINE_SERVICE)}")
    assert r.status_code == 200, r.text
    service = r.json()
    codes = {c["code"] for t in service["type"] for c in t["coding"]}
    assert {"moud-buprenorphine", "moud-naltrexone", "RB-REENTRY"} <= codes
    eastside = resource_id(SOURCE, "organization", "6f1c2a7e-1b7d-4c51-9d2e-0a1b2c3d4e01")
    assert service["providedBy"]["reference"] == f"Organization/{eastside}"
    assert service["eligibility"][0]["comment"] == "Ages 18 and over"
    assert [c["coding"][0]["code"] for c in service["communication"]] == ["en", "es"]
    assert service["availableTime"][0] == {
        "daysOfWeek": ["mon", "tue", "wed", "thu", "fri"],
        "availableStartTime": "07:00:00",
        "availableEndTime": "15:00:00",
    }
    assert len(service["location"]) == 2
    peer = (await client.get(f"/fhir/HealthcareService/{sid(PEER_SERVICE)}")).json()
    assert "family night" in peer["availabilityExceptions"]

    second = await run(app, engine, folder)
    assert sum(second.added.values()) == sum(second.updated.values()) == 0
    assert sum(second.unchanged.values()) == 8
    ident = "https://handoff.dev/fhir/hsds/riverbend-211/service|"
    assert await count(client, "HealthcareService", identifier=ident) == 3
    r = await client.get(f"/fhir/HealthcareService/{sid(BUPRENORPHINE_SERVICE)}")
    assert r.json()["meta"]["versionId"] == "1"  # unchanged: no new version

    # The JMS finds the imported buprenorphine provider, nearest site first.
    jail = await org_client("Organization/jail-a")
    r = await jail.get(
        "/v1/directory",
        params={"service": "moud-buprenorphine", "near": f"{JAIL[0]},{JAIL[1]}", "within_km": 10},
    )
    assert r.status_code == 200, r.text
    [entry] = r.json()
    assert entry["healthcare_service"] == f"HealthcareService/{sid(BUPRENORPHINE_SERVICE)}"
    assert entry["organization_name"] == "Eastside Recovery Clinic"
    assert entry["sites"][0]["name"] == "Eastside Recovery Clinic"  # 2.5 km; Westgate is 7 km


async def test_reimport_updates_changes_and_deactivates_removals(
    app: Any, engine: AsyncEngine, client: httpx.AsyncClient, org_client: Any, tmp_path: Path
) -> None:
    folder = package(tmp_path)
    await run(app, engine, folder)
    # The provider closes its intake: the next import keeps what it said.
    org = resource_id(SOURCE, "organization", "6f1c2a7e-1b7d-4c51-9d2e-0a1b2c3d4e01")
    provider = await org_client(f"Organization/{org}")
    r = await provider.put(
        f"/v1/directory/services/{sid(BUPRENORPHINE_SERVICE)}/accepting", json={"accepting": False}
    )
    assert r.status_code == 200, r.text

    edit(
        folder,
        "services",
        lambda rows: [
            {**row, "name": "Buprenorphine treatment"}
            if row["id"] == BUPRENORPHINE_SERVICE
            else row
            for row in rows
            if row["id"] != PEER_SERVICE
        ],
    )
    edit(
        folder,
        "service_at_location",
        lambda rows: [r for r in rows if r["service_id"] != PEER_SERVICE],
    )
    edit(folder, "attributes", lambda rows: [r for r in rows if r["link_id"] != PEER_SERVICE])
    edit(folder, "schedules", lambda rows: [r for r in rows if r["service_id"] != PEER_SERVICE])
    edit(folder, "languages", lambda rows: [r for r in rows if r["service_id"] != PEER_SERVICE])
    summary = await run(app, engine, folder)
    assert summary.updated["HealthcareService"] == 1
    assert summary.deactivated["HealthcareService"] == 1
    assert summary.added["HealthcareService"] == 0
    service = (await client.get(f"/fhir/HealthcareService/{sid(BUPRENORPHINE_SERVICE)}")).json()
    assert service["name"] == "Buprenorphine treatment"
    assert service["characteristic"][0]["coding"][0]["code"] == "not-accepting-new-patients"
    peer = (await client.get(f"/fhir/HealthcareService/{sid(PEER_SERVICE)}")).json()
    assert peer["active"] is False  # kept, not deleted: referrals naming it keep their meaning
    ident = "https://handoff.dev/fhir/hsds/riverbend-211/service|"
    assert await count(client, "HealthcareService", identifier=ident) == 3
    assert await count(client, "HealthcareService", identifier=ident, active="true") == 2
    # Deactivating again changes nothing.
    again = await run(app, engine, folder)
    assert sum(again.deactivated.values()) == sum(again.updated.values()) == 0


@pytest.mark.parametrize(
    ("table", "change", "expected"),
    [
        (
            "locations",
            lambda rows: [{**r, "latitude": "north"} if r["id"] == WESTGATE else r for r in rows],
            "locations.csv, row 2, field latitude: 'north' is not a number",
        ),
        (
            "services",
            lambda rows: [{**r, "status": "open"} if r["id"] == PEER_SERVICE else r for r in rows],
            "services.csv, row 3, field status: 'open' is not one of",
        ),
        (
            "services",
            lambda rows: [
                {**r, "organization_id": "nope"} if r["id"] == PEER_SERVICE else r for r in rows
            ],
            "services.csv, row 3, field organization_id: 'nope' is not the id of a row of "
            "organizations",
        ),
        (
            "organizations",
            lambda rows: [{**rows[0], "name": ""}, *rows[1:]],
            "organizations.csv, row 1, field name: is required",
        ),
        (
            "schedules",
            lambda rows: [{**rows[0], "opens_at": "7am"}, *rows[1:]],
            "schedules.csv, row 1, field opens_at: '7am' is not a time",
        ),
    ],
)
async def test_bad_row_names_file_row_and_field_and_writes_nothing(
    app: Any,
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    tmp_path: Path,
    table: str,
    change: Any,
    expected: str,
) -> None:
    folder = package(tmp_path)
    edit(folder, table, change)
    with pytest.raises(PackageError) as caught:
        await run(app, engine, folder)
    assert any(expected in p for p in caught.value.problems), caught.value.problems
    assert await count(client, "Organization") == 0


async def test_json_tables_and_an_explicit_owner(
    app: Any, engine: AsyncEngine, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The same tables as JSON arrays import to the same records, created for the owner."""
    folder = tmp_path / "json"
    folder.mkdir()
    for path in SAMPLE.glob("*.csv"):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
        (folder / f"{path.stem}.json").write_text(json.dumps(rows), encoding="utf-8")
    r = await client.post(
        "/fhir/Organization",
        json={"resourceType": "Organization", "name": "Riverbend 211"},
        headers={"Content-Type": "application/fhir+json"},
    )
    publisher = f"Organization/{r.json()['id']}"
    summary = await run(app, engine, folder, owner=publisher)
    assert summary.added["HealthcareService"] == 3
    async with engine.connect() as conn:  # recorded as their creator, like any write
        creator = await repo.index_value(
            conn, "HealthcareService", sid(PEER_SERVICE), 1, CREATOR_PARAM
        )
    assert creator == publisher
    with pytest.raises(PackageError) as caught:
        await run(app, engine, folder, owner="Organization/unknown")
    assert "no such Organization" in caught.value.problems[0]


def test_cli_imports_with_a_summary_and_reports_bad_rows(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HANDOFF_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        "HANDOFF_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "service", "directory", "import"]
    done = subprocess.run(
        [*command, str(SAMPLE), "--source", SOURCE, "--as-admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "HealthcareService      3 added" in done.stdout
    assert "Writing records" in done.stderr  # the progress bar
    done = subprocess.run(
        [*command, str(SAMPLE), "--source", SOURCE, "--as-admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "HealthcareService      0 added      0 updated      3 unchanged" in done.stdout
    folder = package(tmp_path)
    edit(folder, "locations", lambda rows: [{**rows[0], "longitude": "200"}, *rows[1:]])
    done = subprocess.run(
        [*command, str(folder), "--source", SOURCE, "--as-admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "locations.csv, row 1, field longitude: 200 is outside -180 to 180" in done.stderr
    assert "Nothing was imported" in done.stderr
    done = subprocess.run(
        [*command, str(SAMPLE), "--source", SOURCE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "--owner" in done.stderr  # whose records: explicit
