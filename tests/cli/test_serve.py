"""`handoff serve` and `handoff migrate` as a newcomer runs them (real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import DEFAULT_PG, _pg_admin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    args: list[str], env: dict[str, str], cwd: Path, *, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """The server's output goes to ``log`` when given: a long run fills an unread pipe (64 KB),
    and a server blocked writing its log stops answering. A ``--demo`` server seeds no demo
    history unless ``env`` asks for it (tests/api/test_demo_history.py tests it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        env={"HANDOFF_DEMO_HISTORY_MONTHS": "0", **os.environ, **env},
        cwd=cwd,
        stdout=log.open("wb") if log else subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"server exited early ({proc.returncode}):\n{out}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {"HANDOFF_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"}
    proc = start(["serve", "--demo", "--port", str(port)], env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def demo_token(base: str, client_id: str = "demo-admin") -> dict[str, str]:
    r = httpx.post(
        f"{base}/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, f"{client_id}-secret"),
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_demo_server_on_sqlite_seeds_the_network(demo_server: str) -> None:
    headers = demo_token(demo_server)
    orgs = httpx.get(
        f"{demo_server}/fhir/Organization", params={"_count": 50}, headers=headers
    ).json()
    names = {e["resource"]["name"] for e in orgs["entry"]}
    assert "Riverbend County Jail" in names
    assert len(names) >= 6
    services = httpx.get(f"{demo_server}/fhir/HealthcareService", headers=headers).json()
    assert len(services["entry"]) >= 6
    meta = httpx.get(f"{demo_server}/fhir/metadata").json()
    assert meta["fhirVersion"] == "4.0.1"
    docs = httpx.get(f"{demo_server}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # every demo organization has a client that works
    jail = demo_token(demo_server, "demo-jail")
    assert httpx.get(f"{demo_server}/fhir/Task", headers=jail).status_code == 200
    assert httpx.get(f"{demo_server}/fhir/Task").status_code == 401


def test_clients_commands_against_a_running_database(demo_server: str, tmp_path: Path) -> None:
    env = {"HANDOFF_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"}
    headers = demo_token(demo_server)
    org = httpx.get(
        f"{demo_server}/fhir/Organization",
        params={"identifier": "https://handoff.dev/fhir/demo|otp"},
        headers=headers,
    ).json()["entry"][0]["resource"]["id"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = cli(
        "clients",
        "add",
        "--name",
        "OTP EHR",
        "--organization",
        f"Organization/{org}",
        "--scopes",
        "system/Task.rus",
        "--secret",
    )
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert created["client_secret"] and created["organization"] == f"Organization/{org}"
    token = httpx.post(
        f"{demo_server}/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(created["client_id"], created["client_secret"]),
    )
    assert token.status_code == 200 and token.json()["scope"] == "system/Task.rus"
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    assert httpx.get(f"{demo_server}/fhir/Task", headers=bearer).status_code == 200
    listed = json.loads(cli("clients", "list").stdout)
    assert created["client_id"] in {c["client_id"] for c in listed}
    assert all("secret_hash" not in c for c in listed)
    assert cli("clients", "disable", created["client_id"]).returncode == 0
    refused = httpx.get(f"{demo_server}/fhir/Task", headers=bearer)
    assert refused.status_code == 401  # the same, unexpired token stops working at once
    # bad input: unknown organization, missing organization, two auth methods
    bad = cli(
        "clients",
        "add",
        "--name",
        "x",
        "--organization",
        "Organization/nope",
        "--scopes",
        "system/*.rs",
        "--secret",
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    bad = cli("clients", "add", "--name", "x", "--scopes", "system/*.rs", "--secret")
    assert bad.returncode == 2 and "--organization is required" in bad.stderr
    admin = cli(
        "clients", "add", "--name", "ops", "--scopes", "system/*.cruds handoff/admin", "--secret"
    )
    assert admin.returncode == 0, admin.stderr


@pytest.mark.postgres
def test_postgres_unmigrated_is_refused_then_migrate_works(tmp_path: Path) -> None:
    base_url = os.environ.get("HANDOFF_TEST_POSTGRES_URL", DEFAULT_PG)
    name = f"handoff_cli_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_pg_admin(base_url, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL unreachable under CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    env = {"HANDOFF_DATABASE_URL": url}
    try:
        refused = start(["serve", "--port", str(free_port())], env, tmp_path)
        out = refused.communicate(timeout=60)[0].decode()
        assert refused.returncode != 0
        assert "handoff migrate" in out and "HANDOFF_AUTO_MIGRATE" in out
        migrated = subprocess.run(
            [sys.executable, "-m", "service", "migrate"],
            env={**os.environ, **env},
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr.decode()
        port = free_port()
        proc = start(["serve", "--port", str(port)], env, tmp_path)
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        asyncio.run(_pg_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
