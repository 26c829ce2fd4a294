"""Handoff's speed as a ratio of what the bare stack does, measured side by side.

    python -m bench [--quick | --tiny] [--tasks N] [--scenario all|crud|poll] [--json FILE]

Creates a scratch database ``handoff_bench_<random>`` on the local PostgreSQL, migrates it,
loads Tasks by COPY, runs the real service (``python -m service serve``), the ceiling app
(``bench/ceiling_app.py``) and the same-work ceiling (the same app replaying the statements
the service sends, captured from it: ``bench/capture.py``, ``bench/replay.py``) side by side,
each with ``--workers`` uvicorn workers (2), drives each with wrk in turn (A B C, C B A, ...),
prints the table and drops the database. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import asyncpg
import httpx
import orjson

from bench.capture import Plan, Probe, capture
from bench.feed_sql import capture_feed_sql, poll_params
from bench.load import LoadReport, load_tasks
from bench.loadgen import Run, median_run, run_wrk, wrk_path
from bench.tasks import task_body

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ADMIN_CLIENT = "bench-admin"
ADMIN_SCOPES = "system/*.cruds handoff/admin"
PAGE = 50


@dataclass(frozen=True)
class Target:
    rps_ratio: float  # service req/s >= this share of the ceiling's
    p99_factor: float | None = None  # service p99 <= this many times the ceiling's


TARGETS = {
    "read": Target(0.60),
    "create": Target(0.40),
    "poll": Target(0.50, 2.0),
    "referral": Target(0.25),
}
# The project's performance goals: the service's share of the same-work ceiling (bare FastAPI
# + asyncpg sending the very statements the service sends, audit included; bench/replay.py).
GOALS = {
    "read": Target(0.60, 2.0),
    "create": Target(0.40, 2.0),
    "poll": Target(0.60, 2.0),
    "referral": Target(0.25, 2.0),
}
JAIL_CLIENT = "bench-jail"
JAIL_SCOPES = "system/*.cruds"


@dataclass
class Options:
    admin_dsn: str
    crud_tasks: int
    poll_tasks: int
    owners: int | None
    duration: float
    warmup: float
    rounds: int
    scenarios: tuple[str, ...]
    keep: bool
    json_out: Path | None
    profile_dir: Path | None
    workers: int = 1
    only: str | None = None  # run only the benchmarks whose name contains this
    without: tuple[str, ...] = ()  # experiments: the service without these (bench/without)


@dataclass
class Outcome:
    started: str
    machine: dict[str, Any]
    options: dict[str, Any]
    loads: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    same_work: dict[str, Any] = field(default_factory=dict)  # each template's statements


# --- database ---------------------------------------------------------------------------------


def _with_database(dsn: str, name: str) -> str:
    base, _, _old = dsn.rpartition("/")
    return f"{base}/{name}"


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def scratch_database(admin_dsn: str, *, keep: bool) -> Iterator[str]:
    name = f"handoff_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    dsn = _with_database(admin_dsn, name)
    try:
        yield dsn
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


# --- tokens -----------------------------------------------------------------------------------


class Tokens:
    """Bearer tokens for the admin client, signed with the service's own key ring (kept in the
    database) without going through the token endpoint, as the tests do."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.ring: Any = None
        self.clients: dict[str, tuple[str | None, str]] = {ADMIN_CLIENT: (None, ADMIN_SCOPES)}

    async def _setup(self) -> None:
        from service.settings import Settings
        from service.storage.db import create_engine
        from service.workflows.authn import Authenticator

        settings = Settings(database_url=sqlalchemy_url(self.dsn), _env_file=None)
        engine = create_engine(settings)
        auth = Authenticator(engine=engine, settings=settings)
        try:
            self.ring = await auth.ring()
        finally:
            await auth.close()
            await engine.dispose()
        await self._register(ADMIN_CLIENT, None, ADMIN_SCOPES)

    async def _register(self, client_id: str, organization: str | None, scopes: str) -> None:
        from service.settings import Settings
        from service.storage.clients import ClientRecord, add_client
        from service.storage.db import create_engine, write_transaction

        settings = Settings(database_url=sqlalchemy_url(self.dsn), _env_file=None)
        engine = create_engine(settings)
        try:
            async with write_transaction(engine) as conn:
                await add_client(
                    conn,
                    ClientRecord(
                        client_id=client_id,
                        name=f"benchmark {client_id}",
                        organization=organization,
                        scopes=scopes,
                        secret_hash=None,
                        jwks=None,
                        jwks_uri=None,
                        disabled=False,
                        created=datetime.now(UTC),
                    ),
                )
        finally:
            await engine.dispose()
        self.clients[client_id] = (organization, scopes)

    def register(self, client_id: str, organization: str, scopes: str) -> None:
        """A client acting for ``organization`` (e.g. the jail's JMS)."""
        asyncio.run(self._register(client_id, organization, scopes))

    def setup(self) -> None:
        asyncio.run(self._setup())

    def issue(self, base: str, client_id: str = ADMIN_CLIENT) -> str:
        from service.auth.scopes import ScopeSet
        from service.auth.tokens import issue_access_token

        organization, scopes = self.clients[client_id]
        return issue_access_token(
            client_id=client_id,
            organization=organization,
            scopes=ScopeSet.parse(scopes),
            ring=self.ring,
            issuer=f"{base}/auth",
            audience=f"{base}/fhir",
            now=datetime.now(UTC),
            lifetime_seconds=300,
        ).access_token


# --- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process run from the source tree ``root`` (this repository unless told):
    ``python -m service`` imports the tree it is started in."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], workdir: Path, root: Path = ROOT
    ) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        # One public URL, as a deployment sets it: tokens and requests name the same issuer.
        full_env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "HANDOFF_PUBLIC_BASE_URL": self.base,
            **env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=root,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log}\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready: see {self.log}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def service_settings(dsn: str) -> dict[str, str]:
    """The service's environment for a benchmark on ``dsn`` (migrated and loaded already)."""
    return {
        "HANDOFF_DATABASE_URL": sqlalchemy_url(dsn),
        "HANDOFF_LOG_LEVEL": "WARNING",
        "HANDOFF_AUTO_MIGRATE": "false",
        "HANDOFF_DEMO": "false",
        # Each scenario's 32 connections carry one client's token, standing for many clients:
        # its fair share of a replica (8 of a pool of 10) would refuse most of them with 429.
        "HANDOFF_MAX_CONCURRENT_PER_CLIENT": "1000",
        # The notification worker runs as its own process in production (handoff worker); here
        # it would add its statements to the ones captured and replayed per request.
        "HANDOFF_SUBSCRIPTION_WORKER": "false",
    }


WITHOUT_DIR = Path(__file__).resolve().parent / "without"
WITHOUT = ("audit", "validation")


def without_settings(without: tuple[str, ...]) -> dict[str, str]:
    """The environment that takes ``without`` out of the service (bench/without/sitecustomize)."""
    if not without:
        return {}
    return {
        "HANDOFF_BENCH_WITHOUT": ",".join(without),
        "PYTHONPATH": os.pathsep.join([str(WITHOUT_DIR), str(ROOT)]),
    }


def service_command(workers: int) -> list[str]:
    return [PYTHON, "-m", "service", "serve", "--workers", str(workers)]


def ceiling_command(workers: int) -> list[str]:
    return [
        PYTHON,
        "-m",
        "uvicorn",
        "bench.ceiling_app:create_app",
        "--factory",
        "--log-level",
        "warning",
        "--no-access-log",
        "--workers",
        str(workers),
    ]


@contextmanager
def same_work_server(dsn: str, workdir: Path, work_file: Path, *, workers: int) -> Iterator[Server]:
    """The same-work ceiling (bench/ceiling_app.py with BENCH_CEILING_WORK)."""
    env = {"BENCH_CEILING_DSN": dsn, "BENCH_CEILING_WORK": str(work_file)}
    server = Server("same-work", ceiling_command(workers), env, workdir)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def servers(
    dsn: str,
    workdir: Path,
    *,
    feed_file: Path | None,
    workers: int = 1,
    without: tuple[str, ...] = (),
) -> Iterator[tuple[Server, Server]]:
    service_env = {**service_settings(dsn), **without_settings(without)}
    ceiling_env = {"BENCH_CEILING_DSN": dsn}
    if feed_file is not None:
        ceiling_env["BENCH_CEILING_FEED"] = str(feed_file)
    started: list[Server] = []
    try:
        service = Server("service", service_command(workers), service_env, workdir)
        started.append(service)
        ceiling = Server("ceiling", ceiling_command(workers), ceiling_env, workdir)
        started.append(ceiling)
        yield service, ceiling
    finally:
        for s in started:
            s.stop()


# --- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """One benchmark: the same request lines sent to both servers."""

    name: str  # e.g. "poll full page"
    kind: str  # key of TARGETS
    lines: Path
    method: str
    connections: int
    client: str = ADMIN_CLIENT  # whose token the requests carry


class Driver:
    def __init__(self, opts: Options, tokens: Tokens, outcome: Outcome, *, database: str) -> None:
        self.opts = opts
        self.tokens = tokens
        self.outcome = outcome
        self.database = database

    def one(self, bench: Bench, server: Server, duration: float) -> Run:
        return run_wrk(
            benchmark=bench.name,
            server=server.name,
            url=server.base,
            lines=bench.lines,
            method=bench.method,
            token=self.tokens.issue(server.base, bench.client),
            connections=bench.connections,
            duration=duration,
            server_pid=server.pid,
            database=self.database,
        )

    def compare(
        self,
        benches: list[Bench],
        service: Server,
        ceiling: Server,
        same_work: Server | None = None,
    ) -> None:
        """Warm each up, then service, ceiling, same-work ceiling in turn, the order reversed
        every other round (A B C, C B A, ...) for each benchmark; record medians."""
        servers = [service, ceiling] + ([same_work] if same_work is not None else [])
        for bench in benches:
            if self.opts.only and self.opts.only not in bench.name:
                continue
            if self.opts.warmup > 0:
                for server in servers:
                    self.one(bench, server, self.opts.warmup)
            runs: dict[str, list[Run]] = {server.name: [] for server in servers}
            for r in range(self.opts.rounds):
                for server in servers if r % 2 == 0 else servers[::-1]:
                    run = self.one(bench, server, self.opts.duration)
                    runs[server.name].append(run)
                    self.outcome.runs.append({"round": r, **run.as_dict()})
                    _progress(run)
            self._summarise(
                bench,
                runs[service.name],
                runs[ceiling.name],
                runs[same_work.name] if same_work is not None else None,
            )
            if self.opts.profile_dir is not None:
                self._profile(bench, service)

    def _summarise(
        self, bench: Bench, mine: list[Run], theirs: list[Run], same: list[Run] | None = None
    ) -> None:
        s, c = median_run(mine), median_run(theirs)
        target = TARGETS[bench.kind]
        ratio = s.rps / c.rps if c.rps else 0.0
        p99_factor = s.p99_ms / c.p99_ms if c.p99_ms else float("inf")
        met = ratio >= target.rps_ratio and (
            target.p99_factor is None or p99_factor <= target.p99_factor
        )
        per_round = [a.rps / b.rps for a, b in zip(mine, theirs, strict=False) if b.rps]
        summary: dict[str, Any] = {
            "benchmark": bench.name,
            "kind": bench.kind,
            "connections": bench.connections,
            "service": s.as_dict(),
            "ceiling": c.as_dict(),
            "rps_ratio": ratio,
            "rps_ratio_rounds": per_round,
            "p99_factor": p99_factor,
            "target_rps_ratio": target.rps_ratio,
            "target_p99_factor": target.p99_factor,
            "met": met,
        }
        if same:
            w = median_run(same)
            goal = GOALS[bench.kind]
            w_ratio = s.rps / w.rps if w.rps else 0.0
            w_p99 = s.p99_ms / w.p99_ms if w.p99_ms else float("inf")
            summary.update(
                {
                    "same_work": w.as_dict(),
                    "same_work_rps_ratio": w_ratio,
                    "same_work_rps_ratio_rounds": [
                        a.rps / b.rps for a, b in zip(mine, same, strict=False) if b.rps
                    ],
                    "same_work_p99_factor": w_p99,
                    "goal_rps_ratio": goal.rps_ratio,
                    "goal_p99_factor": goal.p99_factor,
                    "goal_met": w_ratio >= goal.rps_ratio
                    and (goal.p99_factor is None or w_p99 <= goal.p99_factor),
                }
            )
        self.outcome.summary.append(summary)

    def _profile(self, bench: Bench, service: Server) -> None:
        spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
        if not Path(spy).exists():
            print("  (py-spy not installed: pip install py-spy; skipping the profile)")
            return
        assert self.opts.profile_dir is not None
        self.opts.profile_dir.mkdir(parents=True, exist_ok=True)
        stem = self.opts.profile_dir / f"{bench.name.replace(' ', '-')}-c{bench.connections}"
        duration = max(2, round(self.opts.duration))
        spy_proc = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(service.pid),
                "--duration",
                str(duration),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                f"{stem}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # let py-spy attach before the load starts
        self.one(bench, service, duration)
        spy_proc.wait(timeout=120)
        print(f"  profile: {stem}.txt (collapsed stacks; see bench/profile_top.py)")


def _progress(run: Run) -> None:
    print(
        f"  {run.benchmark:<24} c={run.connections:<3} {run.server:<8} {run.rps:8.0f} req/s  "
        f"p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms  app {run.app_cpu_us:6.0f} µs  "
        f"db {run.db_cpu_us:5.0f} µs  wrk {run.wrk_cpu_pct:3.0f}%  other {run.other_cpu_pct:3.0f}%"
        + (f"  ERRORS {run.errors}" if run.errors else ""),
        flush=True,
    )


# --- scenarios --------------------------------------------------------------------------------


def _owners(opts: Options, tasks: int) -> int:
    # 1,000 owners at 1M Tasks; smaller runs keep ~300 Tasks (~100 open) per owner, so that
    # full pages of 50 exist.
    return opts.owners or max(1, min(1000, tasks // 300))


def _load(dsn: str, label: str, tasks: int, owners: int, outcome: Outcome) -> LoadReport:
    print(f"loading {tasks:,} Tasks over {owners:,} owners ({label}) ...", flush=True)
    report = asyncio.run(load_tasks(dsn, tasks=tasks, owners=owners))
    print(
        f"  {report.index_rows:,} index rows; COPY {report.seconds_copy:.1f} s, indexes "
        f"{report.seconds_index:.1f} s, vacuum {report.seconds_vacuum:.1f} s",
        flush=True,
    )
    outcome.loads[label] = {**report.__dict__, "seconds": report.seconds}
    return report


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def crud_scenario(dsn: str, workdir: Path, driver: Driver, outcome: Outcome) -> None:
    opts = driver.opts
    tasks = opts.crud_tasks
    owners = _owners(opts, tasks)
    _load(dsn, "crud", tasks, owners, outcome)
    ids = asyncio.run(_fetch(dsn, "SELECT id FROM resource ORDER BY random() LIMIT 20000"))
    reads = _write_lines(workdir / "read.txt", [f"/fhir/Task/{r['id']}" for r in ids])
    with servers(dsn, workdir, feed_file=None, workers=opts.workers, without=opts.without) as (
        service,
        ceiling,
    ):
        # A new referral Task starts as requested and its focus must exist: post its
        # ServiceRequest through the service first, as a JMS would.
        focus = create_service_request(driver.tokens, service)
        bodies = create_task_lines(tasks, owners, focus)
        creates = _write_lines(workdir / "create.txt", bodies)
        _check_crud(driver, service, ceiling, str(ids[0]["id"]), bodies[0].split("\t", 1)[1])
        referrals = _referral_lines(driver, service, ceiling, workdir)
        payloads = [line.split("\t", 1)[1] for line in referrals.read_text().splitlines()]
        read_paths = [f"/fhir/Task/{r['id']}" for r in ids[:8]]
        work = capture_same_work(
            driver, dsn, workdir, "crud", crud_plans(read_paths, bodies, payloads)
        )
        with same_work_server(dsn, workdir, work, workers=opts.workers) as same:
            _check_same_work_crud(driver, dsn, service, same, read_paths[0], bodies[0], payloads[0])
            driver.compare(
                [
                    Bench("read Task by id", "read", reads, "GET", 32),
                    Bench("create Task", "create", creates, "POST", 32),
                    Bench("open referral", "referral", referrals, "POST", 32, client=JAIL_CLIENT),
                ],
                service,
                ceiling,
                same,
            )


SERVICE_REQUEST = {
    "resourceType": "ServiceRequest",
    # A referral records the Sequential Intercept Model intercept it is made at (4: re-entry
    # from jail), as the JMS's referrals do; a Task may not focus on one that records none.
    "extension": [
        {
            "url": "https://handoff.dev/fhir/StructureDefinition/sim-intercept",
            "valueCoding": {
                "system": "https://handoff.dev/fhir/CodeSystem/sim-intercept",
                "code": "4",
            },
        }
    ],
    "status": "active",
    "intent": "order",
    "code": {"text": "Medications for opioid use disorder: continuation after release"},
    "subject": {"reference": "Patient/p-00001"},
    "requester": {"reference": "Organization/jail-01"},
    "authoredOn": "2026-05-02T10:15:00Z",
}


def create_task_lines(first: int, owners: int, focus: str) -> list[str]:
    """200 wrk lines (path, tab, body) each creating a new referral Task, numbered from
    ``first`` (after the loaded ones), all focused on the ServiceRequest ``focus``."""
    return [
        "/fhir/Task\t" + orjson.dumps(new_referral_task(first + i, owners, focus)).decode()
        for i in range(200)
    ]


def create_service_request(tokens: Tokens, service: Server) -> str:
    """A referral's ServiceRequest, posted through the service, for new Tasks to focus on."""
    token = tokens.issue(service.base)
    posted = httpx.post(
        f"{service.base}/fhir/ServiceRequest",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        content=orjson.dumps(SERVICE_REQUEST),
    )
    if posted.status_code != 201:
        raise RuntimeError(f"could not create the ServiceRequest: {posted.text}")
    return f"ServiceRequest/{posted.json()['id']}"


def new_referral_task(i: int, owners: int, focus: str) -> dict[str, Any]:
    body = task_body(i, owners=owners)
    body["status"] = "requested"
    body["focus"] = {"reference": focus}
    body["basedOn"] = [{"reference": focus}]
    return body


# --- POST /v1/referrals ---------------------------------------------------------------------

RECEIVERS = 5


def _organization(name: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "active": True, "name": name}


def referral_payload(receiver: str, *, variant: int) -> dict[str, Any]:
    """A JMS referral (plain JSON) of about 2 KB; @SEQ@ makes ids unique per request."""
    # Referrals must be made before release: always a release a month from now.
    release = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0).isoformat()
    return {
        "referral_id": "BENCH-@SEQ@",
        "person": {
            "person_id": "P-@SEQ@",
            "booking_number": "B-@SEQ@",
            "family_name": "Rivera",
            "given_names": ["Dana", "M"],
            "birth_date": f"19{60 + variant % 40}-03-14",
            "sex": "female" if variant % 2 else "male",
            "phone": "+1 555 0100",
        },
        "referred_by": {"id": "S-1", "name": "Jordan Lee", "role": "peer-specialist"},
        "intercept": 4,
        "release": {"expected_at": release, "location": "Main gate, Riverbend County Jail"},
        "services": ["moud-buprenorphine", "peer-support", "naloxone"][: 1 + variant % 3],
        "receiving_organization": receiver,
        "priority": "urgent" if variant % 4 == 0 else "routine",
        "notes": (
            "Continue buprenorphine 16 mg daily; last dose in custody on the morning of release. "
            "Prefers morning appointments; has a phone; peer specialist will meet at the gate. "
        )
        * 8,
        "contact_directly": True,
    }


def _referral_lines(driver: Driver, service: Server, ceiling: Server, workdir: Path) -> Path:
    """The jail and its receivers exist (made through the service); the JMS client acts for the
    jail; lines are referral payloads. One request is checked on both servers first."""
    token = driver.tokens.issue(service.base)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    def create_org(name: str) -> str:
        r = httpx.post(
            f"{service.base}/fhir/Organization",
            headers=auth,
            content=orjson.dumps(_organization(name)),
        )
        if r.status_code != 201:
            raise RuntimeError(f"could not create an Organization: {r.text}")
        return f"Organization/{r.json()['id']}"

    jail = create_org("Riverbend County Jail (benchmark)")
    receivers = [create_org(f"Community provider {k} (benchmark)") for k in range(RECEIVERS)]
    driver.tokens.register(JAIL_CLIENT, jail, JAIL_SCOPES)
    lines = [
        "/v1/referrals\t"
        + orjson.dumps(referral_payload(receivers[k % RECEIVERS], variant=k)).decode()
        for k in range(200)
    ]
    jms = {
        "Authorization": f"Bearer {driver.tokens.issue(service.base, JAIL_CLIENT)}",
        "Content-Type": "application/json",
    }
    sample = lines[0].split("\t", 1)[1].replace("@SEQ@", "check")
    mine = httpx.post(f"{service.base}/v1/referrals", headers=jms, content=sample)
    theirs = httpx.post(f"{ceiling.base}/v1/referrals", headers=jms, content=sample)
    if mine.status_code != 201 or theirs.status_code != 201:
        raise RuntimeError(f"referral check failed: {mine.status_code} {mine.text[:500]}")
    opened = mine.json()
    driver.outcome.checks.append(
        f"referral: the service answers 201 with Task {opened.get('task_id')} "
        f"({opened.get('status')}) for a {len(sample)}-byte JMS payload; the ceiling inserts it"
    )
    return _write_lines(workdir / "referrals.txt", lines)


def _check_crud(driver: Driver, service: Server, ceiling: Server, rid: str, body: str) -> None:
    token = driver.tokens.issue(service.base)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    mine = httpx.get(f"{service.base}/fhir/Task/{rid}", headers=auth)
    theirs = httpx.get(f"{ceiling.base}/fhir/Task/{rid}")
    if mine.status_code != 200 or theirs.status_code != 200:
        raise RuntimeError(f"read check failed: {mine.status_code} {theirs.status_code}")
    if orjson.loads(mine.content) != orjson.loads(theirs.content):
        raise RuntimeError("the service and the ceiling read different documents")
    posted = [
        httpx.post(f"{s.base}/fhir/Task", headers=auth, content=body).status_code
        for s in (service, ceiling)
    ]
    if posted != [201, 201]:
        raise RuntimeError(f"create check failed: {posted}")
    driver.outcome.checks.append(
        f"read: service and ceiling return the same Task JSON ({len(mine.content)} bytes); "
        "create: both answer 201"
    )


POLL_CURSORS_SQL = """
WITH o AS (
    SELECT value AS owner, resource_id, version_id, txid, seq
    FROM search_index WHERE resource_type = 'Task' AND param = 'owner'
), r AS (
    SELECT resource_id, version_id FROM search_index
    WHERE resource_type = 'Task' AND param = 'status' AND value = 'requested'
), m AS (
    SELECT o.owner, o.txid, o.seq,
           count(r.resource_id) OVER (
               PARTITION BY o.owner ORDER BY o.txid DESC, o.seq DESC
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS open_after
    FROM o LEFT JOIN r USING (resource_id, version_id)
)
SELECT owner, txid, seq FROM m WHERE open_after >= $1
"""

CAUGHT_UP_SQL = """
SELECT DISTINCT ON (value) value AS owner, txid, seq
FROM search_index WHERE resource_type = 'Task' AND param = 'owner'
ORDER BY value, txid DESC, seq DESC
"""


def poll_lines(dsn: str, *, per_owner: int = 8, seed: int = 7) -> tuple[list[str], list[str]]:
    """Request paths: cursors with a full page after them, and cursors at each owner's end."""
    from service.search.execute import encode_cursor

    rng = random.Random(seed)
    by_owner: dict[str, list[tuple[int, int]]] = {}
    for row in asyncio.run(_fetch(dsn, POLL_CURSORS_SQL, PAGE)):
        by_owner.setdefault(row["owner"], []).append((row["txid"], row["seq"]))
    full: list[str] = []
    for owner, positions in sorted(by_owner.items()):
        for txid, seq in rng.sample(positions, min(per_owner, len(positions))):
            full.append(_poll_path(owner, encode_cursor(txid, seq)))
    if not full:
        raise RuntimeError("no owner has a full page of open Tasks: load more Tasks per owner")
    ends = [
        _poll_path(r["owner"], encode_cursor(r["txid"], r["seq"]))
        for r in asyncio.run(_fetch(dsn, CAUGHT_UP_SQL))
    ]
    rng.shuffle(full)
    rng.shuffle(ends)
    return full, ends


def _poll_path(owner: str, cursor: str) -> str:
    return "/fhir/Task?" + urlencode(poll_params(owner, cursor, PAGE))


def poll_scenario(dsn: str, workdir: Path, driver: Driver, outcome: Outcome) -> None:
    opts = driver.opts
    tasks = opts.poll_tasks
    _load(dsn, "poll", tasks, _owners(opts, tasks), outcome)
    full, ends = poll_lines(dsn)
    full_file = _write_lines(workdir / "poll-full.txt", full)
    end_file = _write_lines(workdir / "poll-caught-up.txt", ends)
    # The base URL only matters for absolute references; the service's is the request's own.
    feed = capture_feed_sql(base_url="http://127.0.0.1/fhir", count=PAGE)
    feed_file = workdir / "feed.json"
    feed_file.write_bytes(orjson.dumps(feed.to_dict()))
    outcome.checks.append(f"poll SQL ({len(feed.params)} parameters):\n{feed.sql}")
    with servers(
        dsn,
        workdir,
        feed_file=feed_file,
        workers=driver.opts.workers,
        without=driver.opts.without,
    ) as (
        service,
        ceiling,
    ):
        _check_poll(driver, service, ceiling, full[:5], expect=PAGE)
        _check_poll(driver, service, ceiling, ends[:5], expect=0)
        work = capture_same_work(driver, dsn, workdir, "poll", poll_plans(full, ends))
        with same_work_server(dsn, workdir, work, workers=opts.workers) as same:
            _check_poll(driver, service, same, full[:5], expect=PAGE)
            _check_poll(driver, service, same, ends[:5], expect=0)
            _check_same_writes(driver, dsn, service, same, "poll full page", "GET", full[0])
            _check_same_writes(driver, dsn, service, same, "poll caught up", "GET", ends[0])
            driver.compare(
                [
                    Bench("poll full page", "poll", full_file, "GET", 32),
                    Bench("poll full page", "poll", full_file, "GET", 4),
                    Bench("poll caught up", "poll", end_file, "GET", 32),
                    Bench("poll caught up", "poll", end_file, "GET", 4),
                ],
                service,
                ceiling,
                same,
            )


def _normalised(body: bytes, base: str) -> Any:
    doc = orjson.loads(body.replace(base.encode(), b"BASE"))
    doc.get("meta", {}).pop("lastUpdated", None)
    return doc


def _check_poll(
    driver: Driver, service: Server, ceiling: Server, paths: list[str], *, expect: int
) -> None:
    token = driver.tokens.issue(service.base)
    for path in paths:
        mine = httpx.get(service.base + path, headers={"Authorization": f"Bearer {token}"})
        theirs = httpx.get(ceiling.base + path)
        if mine.status_code != 200 or theirs.status_code != 200:
            raise RuntimeError(
                f"poll check failed on {path}: {mine.status_code} {theirs.status_code}"
            )
        a, b = _normalised(mine.content, service.base), _normalised(theirs.content, ceiling.base)
        if a != b:
            raise RuntimeError(f"service and ceiling answer {path} differently:\n{a}\n{b}")
        if len(a.get("entry", [])) != expect:
            raise RuntimeError(f"{path}: {len(a.get('entry', []))} entries, expected {expect}")
    driver.outcome.checks.append(
        f"poll ({expect} entries): service and {ceiling.name} return the same Bundle for "
        f"{len(paths)} cursors (up to meta.lastUpdated and host)"
    )


# --- the same-work ceiling -------------------------------------------------------------------


def capture_same_work(
    driver: Driver, dsn: str, workdir: Path, label: str, plans: list[Plan]
) -> Path:
    """Capture the service's statements for ``plans`` (bench/capture.py) into a work file for
    the same-work ceiling; the checks say what each replay does and keeps as captured."""
    print(
        f"capturing the service's statements for {', '.join(p.name for p in plans)} ...",
        flush=True,
    )
    captures = capture(dsn, driver.tokens, plans)
    path = workdir / f"work-{label}.json"
    path.write_bytes(captures.to_json())
    for name, template in captures.templates.items():
        line = f"same-work {name}: {template.notes[0]}"
        kept = captures.kept.get(name)
        if kept is not None:
            line += (
                f"; replayed for another request, {kept.kept} of {kept.values} parameter values "
                "are the captured request's"
            )
            if kept.reshaped:
                line += f" and {kept.reshaped} statement(s) have other sizes"
            if kept.examples:
                line += f" (e.g. {kept.examples[0]})"
        driver.outcome.checks.append(line)
        driver.outcome.same_work[name] = {
            "notes": template.notes,
            "statements": [s.sql for s in template.steps],
            "kept": kept.__dict__ if kept is not None else None,
        }
    return path


def _cursor_tokens(path: str) -> dict[str, Any]:
    """A poll's request tokens: its owner, cursor and the cursor's position."""
    from bench.ceiling_app import _decode_cursor

    query = dict(parse_qsl(urlsplit(path).query))
    txid, seq = _decode_cursor(query["_cursor"])
    return {
        "owner": query["owner"],
        "cursor": query["_cursor"],
        "after_txid": txid,
        "after_seq": seq,
    }


def crud_plans(reads: list[str], bodies: list[str], payloads: list[str]) -> list[Plan]:
    """Read (by the Task id in the path), create (the first body), open referral (the first
    payload, its referral number a request token)."""
    run = uuid.uuid4().hex[:8]

    def read(path: str) -> Probe:
        return Probe("GET", path, tokens={"rid": path.rsplit("/", 1)[1]})

    def create(line: str) -> Probe:
        return Probe("POST", "/fhir/Task", line.split("\t", 1)[1].encode())

    def refer(payload: str, seq: str) -> Probe:
        return Probe(
            "POST",
            "/v1/referrals",
            payload.replace("@SEQ@", seq).encode(),
            client=JAIL_CLIENT,
            tokens={"seq": seq},
            content_type="application/json",
        )

    return [
        Plan("read", [read(p) for p in reads[1:4]], read(reads[4]), read(reads[4]), read(reads[5])),
        Plan(
            "create",
            [create(b) for b in bodies[1:4]],
            create(bodies[0]),
            create(bodies[0]),
            create(bodies[5]),
            expect=201,
            answer=True,
        ),
        Plan(
            "referral",
            [refer(payloads[0], f"warm{k}-{run}") for k in range(3)],
            refer(payloads[0], f"capa-{run}"),
            refer(payloads[0], f"capb-{run}"),
            refer(payloads[1], f"capc-{run}"),
            expect=201,
            answer=True,
        ),
    ]


def poll_plans(full: list[str], ends: list[str]) -> list[Plan]:
    """A full page and a caught-up poll (owner, cursor and position are request tokens)."""

    def poll(path: str) -> Probe:
        return Probe("GET", path, tokens=_cursor_tokens(path))

    return [
        Plan(
            name,
            [poll(p) for p in paths[1:4]],
            poll(paths[0]),
            poll(paths[0]),
            poll(paths[5 % len(paths)]),
            page=True,
        )
        for name, paths in (("poll full page", full), ("poll caught up", ends))
    ]


WRITTEN_SQL = """
WITH h AS (SELECT resource_type, id, version_id FROM resource_history WHERE seq > $1)
SELECT h.resource_type, count(DISTINCT (h.id, h.version_id)) AS versions,
       count(i.resource_id) AS index_rows
FROM h LEFT JOIN search_index i
  ON i.resource_type = h.resource_type AND i.resource_id = h.id AND i.version_id = h.version_id
GROUP BY h.resource_type ORDER BY h.resource_type
"""


def _written(dsn: str, send: Callable[[], httpx.Response]) -> tuple[httpx.Response, str]:
    """``send``'s response, and the versions and index rows it wrote, by resource type."""
    mark = asyncio.run(_fetch(dsn, "SELECT coalesce(max(seq), 0) FROM resource_history"))[0][0]
    response = send()
    rows = asyncio.run(_fetch(dsn, WRITTEN_SQL, mark))
    return response, ", ".join(
        f"{r['resource_type']} {r['versions']} + {r['index_rows']} index rows" for r in rows
    )


def _check_same_writes(
    driver: Driver,
    dsn: str,
    service: Server,
    same: Server,
    name: str,
    method: str,
    path: str,
    bodies: tuple[bytes | None, bytes | None] = (None, None),
    *,
    client: str = ADMIN_CLIENT,
    expect: int = 200,
) -> tuple[httpx.Response, httpx.Response]:
    """One request to each server: both answer ``expect`` and write the same rows."""
    answers = []
    for server, body in zip((service, same), bodies, strict=True):
        headers = {
            "Authorization": f"Bearer {driver.tokens.issue(server.base, client)}",
            "Content-Type": "application/fhir+json",
        }
        answers.append(
            _written(
                dsn,
                lambda server=server, body=body, headers=headers: httpx.request(
                    method, server.base + path, content=body, headers=headers, timeout=30
                ),
            )
        )
    (mine, mine_rows), (theirs, their_rows) = answers
    if mine.status_code != expect or theirs.status_code != expect:
        raise RuntimeError(
            f"{name}: service {mine.status_code}, same-work {theirs.status_code}: "
            f"{mine.text[:300]} {theirs.text[:300]}"
        )
    if mine_rows != their_rows:
        raise RuntimeError(
            f"{name}: the same-work ceiling wrote [{their_rows}], the service [{mine_rows}]"
        )
    driver.outcome.checks.append(
        f"same-work {name}: one request writes what one to the service writes: "
        f"{mine_rows or 'nothing'}"
    )
    return mine, theirs


def _check_same_work_crud(
    driver: Driver,
    dsn: str,
    service: Server,
    same: Server,
    read_path: str,
    create_line: str,
    payload: str,
) -> None:
    mine, theirs = _check_same_writes(driver, dsn, service, same, "read", "GET", read_path)
    if orjson.loads(mine.content) != orjson.loads(theirs.content):
        raise RuntimeError("the service and the same-work ceiling read different documents")
    body = create_line.split("\t", 1)[1].encode()
    _check_same_writes(
        driver, dsn, service, same, "create", "POST", "/fhir/Task", (body, body), expect=201
    )
    run = uuid.uuid4().hex[:8]  # a new referral number for each: not a replay of the other
    mine_body, their_body = (payload.replace("@SEQ@", f"{w}-{run}").encode() for w in "sw")
    _check_same_writes(
        driver,
        dsn,
        service,
        same,
        "referral",
        "POST",
        "/v1/referrals",
        (mine_body, their_body),
        client=JAIL_CLIENT,
        expect=201,
    )


# --- report -----------------------------------------------------------------------------------


def _vs(ratio: float, p99: float) -> str:
    return f"{ratio:.0%} req/s, p99 x{p99:.1f}"


def _aim(ratio: float, p99: float | None) -> str:
    return f">={ratio:.0%}" + (f", p99 <=x{p99:.0f}" if p99 else "")


def _rounds(ratios: list[float]) -> str:
    return "rounds " + ", ".join(f"{x:.0%}" for x in ratios)


def report_table(outcome: Outcome) -> str:
    """Per benchmark: the service's row carries its share of the ceiling (against the target)
    and of the same-work ceiling (against the goal); the ceilings' rows, the share per round."""
    head = (
        f"{'benchmark':<18} {'c':>3} {'server':<9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'app µs/req':>10} {'PG µs/req':>9}   {'vs ceiling':<24} {'target':<14} {'result':<7} "
        f"{'vs same-work':<24} {'goal':<16} result"
    )
    out = [head, "-" * len(head)]
    for s in outcome.summary:
        same = s.get("same_work")
        rows = [("service", s["service"]), ("ceiling", s["ceiling"])]
        if same:
            rows.append(("same-work", same))
        for who, r in rows:
            first = who == "service"
            row = (
                f"{s['benchmark'] if first else '':<18} "
                f"{s['connections'] if first else '':>3} {who:<9} {r['rps']:7.0f} "
                f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['app_cpu_us']:10.0f} "
                f"{r['db_cpu_us']:9.0f}"
            )
            if first:
                row += (
                    f"   {_vs(s['rps_ratio'], s['p99_factor']):<24} "
                    f"{_aim(s['target_rps_ratio'], s['target_p99_factor']):<14} "
                    f"{'MET' if s['met'] else 'MISSED':<7}"
                )
                if same:
                    row += (
                        f" {_vs(s['same_work_rps_ratio'], s['same_work_p99_factor']):<24} "
                        f"{_aim(s['goal_rps_ratio'], s['goal_p99_factor']):<16} "
                        f"{'MET' if s['goal_met'] else 'MISSED'}"
                    )
            elif who == "ceiling":
                row += f"   {_rounds(s['rps_ratio_rounds'])}"
            else:
                row += f"   {'':<24} {'':<14} {'':<7} {_rounds(s['same_work_rps_ratio_rounds'])}"
            out.append(row.rstrip())
    return "\n".join(out)


def print_report(outcome: Outcome) -> None:
    print()
    print("=" * 100)
    m = outcome.machine
    print(
        f"Handoff vs bare-stack ceiling — {outcome.started}; {m['cores']} cores, {m['python']}, "
        f"{m['postgres']}"
    )
    o = outcome.options
    print(
        f"{o['rounds']} rounds x {o['duration']:.0f} s per server and benchmark, alternating "
        f"service/ceiling/same-work; medians; wrk -t1; uvicorn {o['workers']} worker(s) each"
    )
    print(
        "ceiling: bare FastAPI + asyncpg, the database work alone; same-work: bare FastAPI + "
        "asyncpg sending the statements the service sends (captured from it), audit included"
    )
    for label, load in outcome.loads.items():
        print(
            f"data ({label}): {load['tasks']:,} Tasks, {load['owners']:,} owners, "
            f"{load['index_rows']:,} index rows, loaded in {load['seconds']:.0f} s"
        )
    if o.get("without"):
        print(
            f"EXPERIMENT: the service WITHOUT {' and '.join(o['without'])} (bench/without): "
            "what that costs, not a result"
        )
    print()
    print(report_table(outcome))
    goals = [s for s in outcome.summary if "goal_met" in s]
    if goals:
        print(
            f"goals: {sum(s['goal_met'] for s in goals)} of {len(goals)} rows meet theirs (the "
            "service's share of the same-work ceiling: read and polls >=60%, create >=40%, "
            "referral >=25%; p99 at most twice the same-work ceiling's)"
        )
    print()
    for check in outcome.checks:
        if not check.startswith("poll SQL"):
            print(f"check: {check}")
    noisy = [r for r in outcome.runs if r["other_cpu_pct"] > 15]
    if noisy:
        print(
            f"note: in {len(noisy)} of {len(outcome.runs)} runs other processes used >15% of the "
            "machine's CPU: compare ratios, not absolute figures"
        )


def _machine(admin_dsn: str) -> dict[str, Any]:
    version = asyncio.run(_fetch(admin_dsn, "SHOW server_version"))[0][0]
    wrk = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, check=False)
    return {
        "cores": os.cpu_count(),
        "python": f"Python {platform.python_version()}",
        "postgres": f"PostgreSQL {version}",
        "wrk": wrk.stdout.splitlines()[0] if wrk.stdout else "wrk",
    }


# --- entry point ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 20k Tasks, 2 rounds of 5 s")
    p.add_argument("--tiny", action="store_true", help="the smallest run (tests): 3k Tasks, 1 s")
    p.add_argument("--tasks", type=int, help="Tasks for the poll benchmark (default 1,000,000)")
    p.add_argument("--crud-tasks", type=int, help="Tasks for read/create (default 100,000)")
    p.add_argument("--owners", type=int, help="owners (default 1,000; fewer for small runs)")
    p.add_argument("--duration", type=float, help="seconds per run (default 10)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per server (default 2)")
    p.add_argument("--rounds", type=int, help="A/B rounds (default 3)")
    p.add_argument("--scenario", choices=("all", "crud", "poll"), default="all")
    p.add_argument(
        "--pg",
        default=os.environ.get("HANDOFF_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="admin DSN of the PostgreSQL server (env HANDOFF_BENCH_PG)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    p.add_argument("--only", help="run only the benchmarks whose name contains this, e.g. read")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--profile", type=Path, help="py-spy the service once per benchmark, into DIR")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="uvicorn worker processes of each server (default 2, one per core, as in the "
        "reference ceilings; --profile needs 1)",
    )
    p.add_argument(
        "--without",
        type=lambda v: tuple(sorted({w.strip() for w in v.split(",") if w.strip()})),
        default=(),
        help="experiment: the service without audit and/or validation (comma-separated), to "
        "measure what each costs; never how Handoff runs (bench/without)",
    )
    a = p.parse_args(argv)
    if not set(a.without) <= set(WITHOUT):
        p.error(f"--without takes {' and/or '.join(WITHOUT)}, comma-separated")
    if a.tiny:
        defaults = {"tasks": 3_000, "crud": 3_000, "duration": 1.0, "warmup": 0.0, "rounds": 1}
    elif a.quick:
        defaults = {"tasks": 20_000, "crud": 20_000, "duration": 5.0, "warmup": 1.0, "rounds": 2}
    else:
        defaults = {
            "tasks": 1_000_000,
            "crud": 100_000,
            "duration": 10.0,
            "warmup": 2.0,
            "rounds": 3,
        }
    return Options(
        admin_dsn=a.pg,
        crud_tasks=a.crud_tasks or int(defaults["crud"]),
        poll_tasks=a.tasks or int(defaults["tasks"]),
        owners=a.owners,
        duration=a.duration or defaults["duration"],
        warmup=a.warmup if a.warmup is not None else defaults["warmup"],
        rounds=a.rounds or int(defaults["rounds"]),
        scenarios=("crud", "poll") if a.scenario == "all" else (a.scenario,),
        keep=a.keep,
        json_out=a.json,
        profile_dir=a.profile,
        workers=1 if a.profile else a.workers,
        only=a.only,
        without=a.without,
    )


def run_scenarios(outcome: Outcome, steps: list[tuple[str, Callable[[], None]]]) -> None:
    """Run each scenario in turn. If one fails, print what the earlier ones measured before
    the error goes on: a full run takes ~20 minutes, and its first part still counts."""
    for name, step in steps:
        try:
            step()
        except BaseException as exc:
            if outcome.summary:
                print_report(outcome)
            print(
                f"\nINCOMPLETE: the {name} scenario stopped ({type(exc).__name__}: {exc}); "
                "any rows above were measured before it",
                flush=True,
            )
            raise


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    wrk_path()
    outcome = Outcome(
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=_machine(opts.admin_dsn),
        options={k: str(v) if isinstance(v, Path) else v for k, v in opts.__dict__.items()},
    )
    workdir = Path(tempfile.mkdtemp(prefix="handoff-bench-"))
    from service.storage.migrate import upgrade

    with scratch_database(opts.admin_dsn, keep=opts.keep) as dsn:
        print(f"database {dsn.rpartition('/')[2]}; work files in {workdir}", flush=True)
        upgrade(sqlalchemy_url(dsn))
        tokens = Tokens(dsn)
        tokens.setup()
        driver = Driver(opts, tokens, outcome, database=dsn.rpartition("/")[2])
        scenarios: dict[str, Callable[[str, Path, Driver, Outcome], None]] = {
            "crud": crud_scenario,
            "poll": poll_scenario,
        }
        run_scenarios(
            outcome,
            [
                (name, functools.partial(scenarios[name], dsn, workdir, driver, outcome))
                for name in opts.scenarios
            ],
        )
    print_report(outcome)
    data = json.dumps(outcome.__dict__, indent=2, default=str)
    (workdir / "results.json").write_text(data)
    if opts.json_out:
        opts.json_out.write_text(data)
    return 0
