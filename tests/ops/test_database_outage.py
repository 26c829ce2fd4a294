"""The database goes away and comes back: 503 + Retry-After meanwhile, recovery without restart.

The test owns a throw-away PostgreSQL cluster (initdb + pg_ctl) so that it can stop it. It skips
where the PostgreSQL server binaries are missing, except under CI (the CI variable), where it
fails.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from service.storage.db import create_engine
from service.storage.migrate import upgrade
from tests.conftest import admin_headers

PG_BIN = Path(os.environ.get("HANDOFF_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))

pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    data: Path
    port: int
    log: Path
    prefix: list[str]  # run as the cluster's owner (initdb refuses root)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        self._pg_ctl("-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not (PG_BIN / "initdb").exists():
        _unavailable(f"PostgreSQL server binaries not found in {PG_BIN} (HANDOFF_TEST_PG_BIN)")
    base = Path(tempfile.mkdtemp(prefix="handoff-pg-", dir="/tmp"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no postgres user to own the cluster")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    c = Cluster(data=base / "data", port=_free_port(), log=base / "postgres.log", prefix=prefix)
    try:
        subprocess.run(
            [*prefix, str(PG_BIN / "initdb"), "-D", str(c.data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        c.start()
        yield c
    finally:
        subprocess.run(
            [*prefix, str(PG_BIN / "pg_ctl"), "-D", str(c.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def migrated(cluster: Cluster) -> Cluster:
    upgrade(cluster.url)
    return cluster


@pytest.fixture
async def outage_client(migrated: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    cluster = migrated
    settings = Settings(database_url=cluster.url, db_pool_timeout=3, _env_file=None)  # type: ignore[call-arg]
    engine = create_engine(settings)
    app = create_app(settings, engine=engine)
    transport = httpx.ASGITransport(app=app)
    try:
        headers = await admin_headers(app, engine)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as c:
            yield c
    finally:
        if app.state.auth is not None:
            await app.state.auth.close()
        await engine.dispose()


def _is_transient_outcome(r: httpx.Response) -> bool:
    body = r.json()
    return bool(
        body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "transient"
    )


async def test_database_outage_answers_503_and_recovers_without_restart(
    cluster: Cluster, outage_client: httpx.AsyncClient
) -> None:
    c = outage_client
    assert (await c.get("/readyz")).json() == {"status": "ready"}
    assert (await c.get("/fhir/Task")).status_code == 200  # the pool now holds a connection

    await asyncio.to_thread(cluster.stop)
    ready = await c.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["database"] == "unreachable"
    assert int(ready.headers["Retry-After"]) > 0
    for _ in range(2):  # the pooled (now dead) connection, then a failed reconnect
        r = await c.get("/fhir/Task")
        assert r.status_code == 503
        assert _is_transient_outcome(r)
        assert int(r.headers["Retry-After"]) > 0
    # The read by id and the poll run on the asyncpg connection itself: the same answer.
    for path in ("/fhir/Task/t-1", "/fhir/Task?_cursor=start"):
        r = await c.get(path)
        assert r.status_code == 503, (path, r.text)
        assert _is_transient_outcome(r)
    assert (await c.get("/healthz")).status_code == 200  # alive, just not ready

    await asyncio.to_thread(cluster.start)
    assert (await c.get("/readyz")).json() == {"status": "ready"}
    r = await c.get("/fhir/Task")
    assert r.status_code == 200 and r.json()["resourceType"] == "Bundle"


async def test_unmigrated_database_is_not_ready(cluster: Cluster) -> None:
    settings = Settings(database_url=cluster.url, _env_file=None)  # type: ignore[call-arg]
    engine = create_engine(settings)
    try:
        app = create_app(settings, engine=engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["database"] == "not migrated"
    finally:
        await engine.dispose()


async def test_a_restart_between_requests_is_invisible(
    cluster: Cluster, outage_client: httpx.AsyncClient
) -> None:
    """Pooled connections to the old server are pinged and replaced before use."""
    c = outage_client
    assert (await c.get("/fhir/Task")).status_code == 200
    await asyncio.to_thread(cluster.stop)
    await asyncio.to_thread(cluster.start)
    assert (await c.get("/fhir/Task")).status_code == 200
    assert (await c.get("/readyz")).status_code == 200
