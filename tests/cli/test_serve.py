"""`handoff serve` and `handoff migrate` as a newcomer runs them (real processes)."""

from __future__ import annotations

import asyncio
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


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
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


def test_demo_server_on_sqlite_seeds_the_network(demo_server: str) -> None:
    orgs = httpx.get(f"{demo_server}/fhir/Organization", params={"_count": 50}).json()
    names = {e["resource"]["name"] for e in orgs["entry"]}
    assert "Riverbend County Jail" in names
    assert len(names) >= 6
    services = httpx.get(f"{demo_server}/fhir/HealthcareService").json()
    assert len(services["entry"]) >= 6
    meta = httpx.get(f"{demo_server}/fhir/metadata").json()
    assert meta["fhirVersion"] == "4.0.1"
    docs = httpx.get(f"{demo_server}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


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
