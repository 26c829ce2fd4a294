"""Notification delivery across real processes on one PostgreSQL: two API processes and two
`handoff worker` processes deliver each event once per subscription, and a worker killed with
SIGKILL in the middle of a delivery loses nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from service.auth.client_secrets import hash_client_secret
from service.settings import Settings
from service.storage.clients import ClientRecord, add_client
from service.storage.db import create_engine, write_transaction
from tests.builders import organization, subscription, task
from tests.cli.test_serve import free_port, start, wait_ready
from tests.conftest import TABLES
from tests.receivers import Receiver, event_numbers, focuses

pytestmark = pytest.mark.postgres

WORKER_ENV = {
    "HANDOFF_SUBSCRIPTION_POLL_SECONDS": "0.05",
    "HANDOFF_SUBSCRIPTION_TIMEOUT_SECONDS": "2",
    "HANDOFF_SUBSCRIPTION_LEASE_SECONDS": "1",
    "HANDOFF_SUBSCRIPTION_RETRY_SECONDS": "0.2",
    "HANDOFF_SUBSCRIPTION_ALLOW_LOCAL_HTTP": "true",
    "HANDOFF_LOG_LEVEL": "WARNING",
    "HANDOFF_MAX_CONCURRENT_PER_CLIENT": "100",
}
FHIR_JSON = {"Content-Type": "application/fhir+json"}


async def _prepare(url: str) -> None:
    engine = create_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        async with write_transaction(engine) as conn:
            for cid, org, scopes in (
                ("admin", None, "system/*.cruds handoff/admin"),
                ("jail", "Organization/jail", "system/*.cruds"),
                ("otp", "Organization/otp", "system/*.cruds"),
            ):
                await add_client(
                    conn,
                    ClientRecord(
                        client_id=cid,
                        name=cid,
                        organization=org,
                        scopes=scopes,
                        secret_hash=hash_client_secret(f"{cid}-secret"),
                        jwks=None,
                        jwks_uri=None,
                        disabled=False,
                        created=datetime.now(UTC),
                    ),
                )
    finally:
        await engine.dispose()


def _client(base: str, cid: str) -> httpx.Client:
    r = httpx.post(
        f"{base}/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(cid, f"{cid}-secret"),
    )
    assert r.status_code == 200, r.text
    return httpx.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {r.json()['access_token']}"},
        timeout=30,
    )


class Cluster:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def apis(self, count: int) -> list[str]:
        """``count`` API processes (``serve --no-worker``), started together."""
        started = []
        for _ in range(count):
            port = free_port()
            env = {**WORKER_ENV, "HANDOFF_DATABASE_URL": self.url}
            proc = start(
                ["serve", "--no-worker", "--port", str(port)],
                env,
                self.tmp,
                log=self.tmp / f"api-{port}.log",
            )
            self.procs.append(proc)
            started.append((f"http://127.0.0.1:{port}", proc))
        for base, proc in started:
            wait_ready(base, proc, timeout=180)  # a loaded CI machine starts them slowly
        return [base for base, _ in started]

    def worker(self) -> subprocess.Popen[bytes]:
        env = {**WORKER_ENV, "HANDOFF_DATABASE_URL": self.url}
        log = self.tmp / f"worker-{len(self.procs)}.log"
        proc = start(["worker", "--health-port", "0"], env, self.tmp, log=log)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    asyncio.run(_prepare(postgres_url))
    c = Cluster(postgres_url, tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _setup(base: str, endpoint: str) -> tuple[httpx.Client, str, str]:
    admin = _client(base, "admin")
    for name in ("jail", "otp"):
        body = {**organization(name, name), "id": name}
        r = admin.put(f"/fhir/Organization/{name}", json=body, headers=FHIR_JSON)
        assert r.status_code in (200, 201), r.text
    otp = _client(base, "otp")
    r = otp.post(
        "/fhir/Subscription",
        json=subscription(endpoint, filters=["Task?owner=Organization/otp"]),
        headers=FHIR_JSON,
    )
    assert r.status_code == 201, r.text
    return admin, r.json()["id"], "Organization/otp"


def _make_tasks(bases: list[str], count: int) -> list[str]:
    """``count`` Tasks from the jail, spread over the API processes, 20 writers at once."""
    clients = [_client(base, "jail") for base in bases]

    async def run() -> list[str]:
        async_clients = [
            httpx.AsyncClient(base_url=str(c.base_url), headers=dict(c.headers), timeout=30)
            for c in clients
        ]
        gate = asyncio.Semaphore(20)

        async def one(i: int) -> str:
            async with gate:
                c = async_clients[i % len(async_clients)]
                body = task(
                    requester="Organization/jail",
                    owner="Organization/otp",
                    patient_ref=f"Patient/p{i}",
                    focus=f"ServiceRequest/sr{i}",
                )
                r = await c.post("/fhir/Task", json=body, headers=FHIR_JSON)
                assert r.status_code == 201, r.text
                return str(r.json()["id"])

        try:
            return list(await asyncio.gather(*(one(i) for i in range(count))))
        finally:
            for c in async_clients:
                await c.aclose()

    return asyncio.run(run())


def _events(receiver: Receiver, after: float = 0.0) -> list[tuple[int, str | None]]:
    return [
        (n, f)
        for b in receiver.of_type("event-notification", after=after)
        for n, f in zip(event_numbers(b), focuses(b), strict=True)
    ]


def _wait(cond: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)


def test_two_apis_and_two_workers_deliver_each_event_once(cluster: Cluster) -> None:
    receiver = Receiver().start()
    try:
        bases = cluster.apis(2)
        cluster.worker()
        cluster.worker()
        _setup(bases[0], receiver.url)
        _wait(lambda: receiver.of_type("handshake"))
        ids = _make_tasks(bases, 40)
        _wait(lambda: len(_events(receiver)) >= 40)
        time.sleep(1.0)  # a duplicate would arrive by now
        events = _events(receiver)
        numbers = Counter(n for n, _ in events)
        assert sorted(numbers) == list(range(1, 41))  # gap-free, monotonic
        assert all(c == 1 for c in numbers.values()), numbers  # once each
        assert sorted(f.split("/")[1] for _, f in events if f) == sorted(ids)
        assert len(receiver.of_type("handshake")) == 1
    finally:
        receiver.stop()


def test_a_worker_killed_mid_delivery_loses_nothing(cluster: Cluster) -> None:
    receiver = Receiver().start()
    try:
        [base] = cluster.apis(1)
        first = cluster.worker()
        _setup(base, receiver.url)
        _wait(lambda: receiver.of_type("handshake"))
        receiver.delay = 1.5  # the next delivery is in flight when the worker dies
        arrived = receiver.arrived
        ids = _make_tasks([base], 10)
        _wait(lambda: receiver.arrived > arrived, 30)
        assert receiver.arrived > arrived, "no delivery started"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed = time.monotonic()
        receiver.delay = 0
        cluster.worker()
        # What the second worker delivers covers everything, the killed delivery's too.
        _wait(lambda: {n for n, _ in _events(receiver, killed)} >= set(range(1, 11)), 60)
        numbers = {n for n, _ in _events(receiver, killed)}
        assert numbers == set(range(1, 11)), sorted(numbers)
        assert {f.split("/")[1] for _, f in _events(receiver, killed) if f} == set(ids)
    finally:
        receiver.stop()
