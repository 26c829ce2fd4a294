"""A soak: the service under a steady mixed load for minutes, watched for growth and errors.

    python -m bench.soak [--minutes 10 | --seconds S] [--clients 16] [--interval 60]

Creates a scratch database on the local PostgreSQL, migrates it, loads Tasks by COPY (as
``python -m bench`` does), starts the service (``python -m service serve``, 2 uvicorn workers)
on loopback and drives it for the given time with a mix of what its clients do:

* ``referral``: a jail's JMS opens a referral (``POST /v1/referrals``; release a month from now)
* ``poll``: a provider polls its Task change feed (``_cursor``, following its ``cursor``/``next``
  links), and queues the newly requested Tasks it sees
* ``accept``: a provider accepts one of those Tasks (``PUT`` with ``If-Match: W/"<version>"``)
* ``read``: ``GET /fhir/Task/{id}`` of a loaded Task (administrator)
* ``search``: ``GET /fhir/Task?owner=…&status=…&_count=20`` over the loaded Tasks
* ``assessment``: the JMS records a DAST-10 (``POST /v1/assessments``) for a person it referred

Every interval (a minute unless ``--interval``) it prints throughput, p50/p99 latency overall
and per kind, the RSS of the service's worker processes (from /proc), the connection pools of
the workers (the service's own ``db.client.connection.*`` gauges, exported by OTLP to a
receiver here on loopback), PostgreSQL backends of the database (``pg_stat_activity``: active,
waiting on a lock) and errors (non-2xx by status, and transport failures). At the end it says
whether memory was flat (median RSS of the second half of the run against the first half,
after a warm-up) and whether there were no errors; the exit status is 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import math
import os
import random
import resource
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import orjson

from bench.loadgen import (
    _cpu_delta,
    machine_cpu,
    postgres_cpu,
    process_tree,
    rss_bytes,
    tree_cpu,
)
from bench.run import (
    ADMIN_CLIENT,
    JAIL_SCOPES,
    Outcome,
    Server,
    Tokens,
    _fetch,
    _load,
    _organization,
    referral_payload,
    scratch_database,
    service_command,
    service_settings,
    sqlalchemy_url,
)
from bench.tasks import STATUSES, owner_ref

KINDS = ("referral", "poll", "accept", "read", "search", "assessment")
# Shares of the requests each client picks (an accept with nothing to accept polls instead).
MIX = {"referral": 10, "poll": 30, "accept": 10, "read": 30, "search": 10, "assessment": 10}
JMS_CLIENT = "soak-jms"
PROVIDERS = 5
NO_LONGER_MATCHES = "https://handoff.dev/fhir/StructureDefinition/search-no-longer-matches"
ACCEPTED = {
    "coding": [
        {"system": "https://handoff.dev/fhir/CodeSystem/warm-handoff-status", "code": "accepted"}
    ]
}


@dataclass
class Options:
    admin_dsn: str
    seconds: float
    interval: float
    clients: int
    workers: int
    tasks: int
    rss_growth: float  # largest allowed growth of median RSS, second half against first
    seed: int
    json_out: Path | None
    keep: bool
    mix: dict[str, float] = field(default_factory=lambda: dict(MIX))


# --- what is measured -------------------------------------------------------------------------


@dataclass
class Window:
    """What happened during one reporting interval."""

    started: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: Counter[str] = field(default_factory=Counter)  # "503", "ReadTimeout", ...
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    rss: list[int] = field(default_factory=list)  # bytes, sum over the worker processes
    pg_active: list[int] = field(default_factory=list)
    pg_lock_waits: list[int] = field(default_factory=list)
    pg_backends: list[int] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Verdict:
    flat: bool
    first_mb: float
    last_mb: float
    growth: float  # share, e.g. 0.03
    slope_mb_per_min: float
    errors: int

    @property
    def passed(self) -> bool:
        return self.flat and self.errors == 0


def memory_verdict(
    samples: list[tuple[float, int]], *, warmup: float, threshold: float, errors: int
) -> Verdict:
    """Compare the median RSS of the second half of the samples after ``warmup`` seconds with
    the first half's; ``samples`` are (seconds since start, bytes)."""
    kept = [(t, b) for t, b in samples if t >= warmup] or samples
    if len(kept) < 2:
        return Verdict(True, 0.0, 0.0, 0.0, 0.0, errors)
    half = len(kept) // 2
    first = statistics.median(b for _, b in kept[:half]) / 2**20
    last = statistics.median(b for _, b in kept[half:]) / 2**20
    growth = (last - first) / first if first else 0.0
    times = [t for t, _ in kept]
    slope = 0.0
    if max(times) > min(times):
        slope = statistics.linear_regression(times, [b / 2**20 for _, b in kept]).slope * 60
    return Verdict(growth < threshold, first, last, growth, slope, errors)


# --- the service's pool gauges, received by OTLP -----------------------------------------------


class PoolGauges:
    """A loopback OTLP/HTTP metrics receiver: keeps the last ``db.client.connection.count``
    (used) and ``db.client.connection.max`` each worker process (``service.instance.id``)
    exported, and the samples of the interval."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.used: dict[str, int] = {}
        self.capacity: dict[str, int] = {}
        self.window: list[tuple[int, int]] = []  # (used, capacity) summed over the workers
        self.exports = 0
        gauges = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                gauges.receive(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"

    def receive(self, body: bytes) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for rm in request.resource_metrics:
                attrs = {a.key: a.value.string_value for a in rm.resource.attributes}
                worker = attrs.get("service.instance.id", "?")
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        for point in metric.gauge.data_points:
                            state = {a.key: a.value.string_value for a in point.attributes}
                            if metric.name == "db.client.connection.count":
                                if state.get("db.client.connection.state") == "used":
                                    self.used[worker] = int(point.as_int)
                            elif metric.name == "db.client.connection.max":
                                self.capacity[worker] = int(point.as_int)
            self.exports += 1
            if self.used:
                self.window.append((sum(self.used.values()), sum(self.capacity.values())))

    def take(self) -> list[tuple[int, int]]:
        with self.lock:
            taken, self.window = self.window, []
        return taken

    def __enter__(self) -> PoolGauges:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def service_env(self, every: float) -> dict[str, str]:
        """The service's environment that makes it export its metrics (only) to here, every
        ``every`` seconds."""
        return {
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": self.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": str(round(every * 1000)),
            "OTEL_TRACES_EXPORTER": "none",
        }


# --- the clients' side ------------------------------------------------------------------------


@dataclass
class Provider:
    """A community provider: its own client, its feed position and the Tasks it has seen."""

    organization: str
    client_id: str
    url: str  # where its next poll goes: the first page, then the cursor/next link
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    to_accept: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=2000))


@dataclass
class World:
    """What the clients share: tokens, the jail's receivers, people referred, loaded Tasks."""

    base: str
    tokens: Tokens
    providers: list[Provider]
    referrals: list[str]  # referral payloads with @SEQ@
    task_ids: list[str]
    owners: int
    assessment: dict[str, Any]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    seq: Iterator[int] = field(default_factory=itertools.count)
    people: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=500))
    bearer: dict[str, str] = field(default_factory=dict)

    def refresh_tokens(self) -> None:
        for client_id in self.tokens.clients:
            self.bearer[client_id] = f"Bearer {self.tokens.issue(self.base, client_id)}"


def assessment_example() -> dict[str, Any]:
    """The example the route documents (service/api/routes/v1_assessments.py)."""
    from service.api.routes.v1_assessments import AssessmentIn

    extra: Any = AssessmentIn.model_config.get("json_schema_extra")
    example: dict[str, Any] = copy.deepcopy(extra["example"])
    return example


async def _referral(client: httpx.AsyncClient, world: World, rng: random.Random) -> int:
    n = next(world.seq)
    body = rng.choice(world.referrals).replace("@SEQ@", f"{world.run_id}-{n}")
    r = await client.post(
        "/v1/referrals",
        content=body,
        headers={"Authorization": world.bearer[JMS_CLIENT], "Content-Type": "application/json"},
    )
    if r.status_code == 201:
        world.people.append(orjson.loads(body)["person"])
    return r.status_code


async def _poll(client: httpx.AsyncClient, world: World, rng: random.Random) -> int:
    free = [p for p in world.providers if not p.busy.locked()]
    provider = rng.choice(free or world.providers)
    async with provider.busy:  # a provider polls one page at a time, in order
        r = await client.get(
            provider.url, headers={"Authorization": world.bearer[provider.client_id]}
        )
        if r.status_code != 200:
            return r.status_code
        bundle = orjson.loads(r.content)
        links = {link["relation"]: link["url"] for link in bundle.get("link", [])}
        for entry in bundle.get("entry", []):
            task = entry.get("resource", {})
            gone = any(
                e.get("url") == NO_LONGER_MATCHES
                for e in entry.get("search", {}).get("extension", [])
            )
            if (
                task.get("resourceType") == "Task"
                and task.get("status") == "requested"
                and not gone
            ):
                provider.to_accept.append(task)
        provider.url = links.get("next") or links.get("cursor") or provider.url
    return r.status_code


async def _accept(client: httpx.AsyncClient, world: World, rng: random.Random) -> int | None:
    waiting = [p for p in world.providers if p.to_accept]
    if not waiting:
        return None
    provider = rng.choice(waiting)
    task = provider.to_accept.popleft()
    new = {**task, "status": "accepted", "businessStatus": ACCEPTED}
    r = await client.put(
        f"/fhir/Task/{task['id']}",
        content=orjson.dumps(new),
        headers={
            "Authorization": world.bearer[provider.client_id],
            "Content-Type": "application/fhir+json",
            "If-Match": f'W/"{task["meta"]["versionId"]}"',
        },
    )
    return r.status_code


async def _read(client: httpx.AsyncClient, world: World, rng: random.Random) -> int:
    r = await client.get(
        f"/fhir/Task/{rng.choice(world.task_ids)}",
        headers={"Authorization": world.bearer[ADMIN_CLIENT]},
    )
    return r.status_code


async def _search(client: httpx.AsyncClient, world: World, rng: random.Random) -> int:
    query = urlencode(
        [
            ("owner", owner_ref(rng.randrange(world.owners))),
            ("status", rng.choice(STATUSES)),
            ("_count", "20"),
        ]
    )
    r = await client.get(
        f"/fhir/Task?{query}", headers={"Authorization": world.bearer[ADMIN_CLIENT]}
    )
    return r.status_code


async def _assessment(client: httpx.AsyncClient, world: World, rng: random.Random) -> int:
    body = copy.deepcopy(world.assessment)
    if world.people:
        body["person"] = rng.choice(world.people)
    administered = datetime.now(UTC) - timedelta(minutes=rng.randrange(1, 120))
    body["administered_at"] = administered.replace(microsecond=0).isoformat()
    r = await client.post(
        "/v1/assessments",
        content=orjson.dumps(body),
        headers={"Authorization": world.bearer[JMS_CLIENT], "Content-Type": "application/json"},
    )
    return r.status_code


REQUESTS = {
    "referral": _referral,
    "poll": _poll,
    "accept": _accept,
    "read": _read,
    "search": _search,
    "assessment": _assessment,
}


# --- driving and watching -----------------------------------------------------------------------


PG_ACTIVITY_SQL = """
SELECT count(*) AS backends,
       count(*) FILTER (WHERE state = 'active') AS active,
       count(*) FILTER (WHERE wait_event_type = 'Lock') AS lock_waits
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


@dataclass(frozen=True)
class CpuMark:
    """CPU seconds used so far, to difference over an interval."""

    service: float  # the server's processes
    generator: float  # this process (the clients)
    postgres: dict[int, float]  # PostgreSQL's processes for the database
    machine_busy: float  # all cores
    machine_total: float


def worker_pids(pid: int) -> set[int]:
    """The processes that serve requests: uvicorn's spawned workers under ``pid`` (not its
    multiprocessing resource tracker), or ``pid`` itself when it serves alone (one worker)."""
    workers = set()
    for child in process_tree(pid) - {pid}:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if b"spawn_main" in fh.read():
                    workers.add(child)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return workers or {pid}


class Soak:
    def __init__(
        self, opts: Options, world: World, server: Server, gauges: PoolGauges, dsn: str
    ) -> None:
        self.opts = opts
        self.world = world
        self.server = server
        self.gauges = gauges
        self.dsn = dsn
        self.database = dsn.rpartition("/")[2]
        self.windows: list[dict[str, Any]] = []
        self.rss_samples: list[tuple[float, int]] = []
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self.t0 = 0.0
        self.deadline = 0.0
        self.exited: int | None = None  # the service's exit status, if it stopped
        self.window = Window(started=0.0)
        self.cpu_mark = CpuMark(0.0, 0.0, {}, 0.0, 0.0)

    def cpu_now(self) -> CpuMark:
        own = resource.getrusage(resource.RUSAGE_SELF)
        busy, total = machine_cpu()
        return CpuMark(
            service=tree_cpu(self.server.pid),
            generator=own.ru_utime + own.ru_stime,
            postgres=postgres_cpu(self.database),
            machine_busy=busy,
            machine_total=total,
        )

    def workers_rss(self) -> tuple[int, int]:
        """(bytes, processes): RSS summed over the server's worker processes."""
        workers = worker_pids(self.server.pid)
        return sum(rss_bytes(pid) for pid in workers), len(workers)

    async def client(self, k: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(self.opts.seed * 1000 + k)
        kinds = [kind for kind, weight in self.opts.mix.items() if weight > 0]
        weights = [self.opts.mix[kind] for kind in kinds]
        while time.monotonic() < self.deadline:
            kind = rng.choices(kinds, weights)[0]
            started = time.monotonic()
            try:
                status = await REQUESTS[kind](http, self.world, rng)
                if status is None:  # nothing to accept yet: poll instead
                    kind, status = "poll", await _poll(http, self.world, rng)
                outcome = str(status) if not 200 <= status < 300 else None
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            elapsed = (time.monotonic() - started) * 1000
            self.window.latencies[kind].append(elapsed)
            if outcome is not None:
                self.window.errors[outcome] += 1
                self.window.errors_by_kind[f"{kind} {outcome}"] += 1

    async def watch(self) -> None:
        """Once a second: RSS, PostgreSQL's backends; every interval: a report line. Ends the
        run early if the service exits."""
        conn = await asyncpg.connect(self.dsn)
        next_report = self.t0 + self.opts.interval
        next_tokens = self.t0 + 60
        try:
            while True:
                now = time.monotonic()
                if self.server.proc.poll() is not None:
                    self.exited = self.server.proc.returncode
                    print(f"the service exited ({self.exited}): see {self.server.log}", flush=True)
                    self.deadline = now
                rss, _ = self.workers_rss()
                self.rss_samples.append((now - self.t0, rss))
                self.window.rss.append(rss)
                row = await conn.fetchrow(PG_ACTIVITY_SQL)
                assert row is not None
                self.window.pg_backends.append(row["backends"])
                self.window.pg_active.append(row["active"])
                self.window.pg_lock_waits.append(row["lock_waits"])
                if now >= next_tokens:
                    self.world.refresh_tokens()
                    next_tokens += 60
                if now >= next_report or now >= self.deadline:
                    self.close_window(now)
                    next_report += self.opts.interval
                if now >= self.deadline:
                    return
                await asyncio.sleep(max(0.0, min(1.0, self.deadline - time.monotonic())))
        finally:
            await conn.close()

    def close_window(self, now: float) -> None:
        w, self.window = self.window, Window(started=now - self.t0)
        seconds = max(now - self.t0 - w.started, 1e-9)
        everything = [x for kind in KINDS for x in w.latencies[kind]]
        pool = self.gauges.take()
        before, after = self.cpu_mark, self.cpu_now()
        self.cpu_mark = after
        cores = max(after.machine_total - before.machine_total, 1e-9)  # CPU-seconds available
        figures = {
            "from_s": round(w.started, 1),
            "to_s": round(now - self.t0, 1),
            "requests": len(everything),
            "rps": len(everything) / seconds,
            "p50_ms": percentile(everything, 50),
            "p99_ms": percentile(everything, 99),
            "kinds": {
                kind: {
                    "requests": len(w.latencies[kind]),
                    "rps": len(w.latencies[kind]) / seconds,
                    "p50_ms": percentile(w.latencies[kind], 50),
                    "p99_ms": percentile(w.latencies[kind], 99),
                }
                for kind in KINDS
            },
            "rss_mb": (statistics.median(w.rss) / 2**20) if w.rss else 0.0,
            "rss_max_mb": (max(w.rss) / 2**20) if w.rss else 0.0,
            "pool_used_max": max((u for u, _ in pool), default=None),
            "pool_capacity": max((c for _, c in pool), default=None),
            "pool_samples": len(pool),
            "pool_full_samples": sum(1 for u, c in pool if c and u >= c),
            "pg_backends_max": max(w.pg_backends, default=0),
            "pg_active_max": max(w.pg_active, default=0),
            "pg_lock_wait_samples": sum(1 for x in w.pg_lock_waits if x),
            "pg_samples": len(w.pg_active),
            # Shares of the whole machine (all cores) during the interval.
            "machine_busy_pct": 100 * (after.machine_busy - before.machine_busy) / cores,
            "service_cpu_pct": 100 * (after.service - before.service) / cores,
            "postgres_cpu_pct": 100 * _cpu_delta(before.postgres, after.postgres) / cores,
            "generator_cpu_pct": 100 * (after.generator - before.generator) / cores,
            "errors": dict(w.errors),
            "errors_by_kind": dict(w.errors_by_kind),
        }
        self.windows.append(figures)
        self.errors.update(w.errors)
        self.requests += len(everything)
        print_window(len(self.windows), figures, flush=True)

    async def run(self) -> None:
        self.world.refresh_tokens()
        self.t0 = time.monotonic()
        self.cpu_mark = self.cpu_now()
        self.gauges.take()  # exports from before the run (start-up, setting up) do not count
        self.window = Window(started=0.0)
        self.deadline = self.t0 + self.opts.seconds
        limits = httpx.Limits(
            max_connections=self.opts.clients, max_keepalive_connections=self.opts.clients
        )
        async with httpx.AsyncClient(
            base_url=self.server.base, limits=limits, timeout=30.0
        ) as http:
            await asyncio.gather(
                self.watch(),
                *(self.client(k, http) for k in range(self.opts.clients)),
            )


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):d}:{int(seconds % 60):02d}"


def print_window(n: int, f: dict[str, Any], *, flush: bool = False) -> None:
    errors = sum(f["errors"].values())
    if f["pool_samples"]:
        pool = (
            f"pool used <={f['pool_used_max']}/{f['pool_capacity']} "
            f"(full in {f['pool_full_samples']}/{f['pool_samples']} samples)"
        )
    else:
        pool = "pool n/a (no export received)"
    print(
        f"[{n:2d}] {_clock(f['from_s'])}-{_clock(f['to_s'])}  {f['rps']:6.0f} req/s  "
        f"p50 {f['p50_ms']:6.1f} ms  p99 {f['p99_ms']:7.1f} ms  "
        f"RSS {f['rss_mb']:6.1f} MB  {pool}  "
        f"PG backends <={f['pg_backends_max']}, active <={f['pg_active_max']}, "
        f"lock waits in {f['pg_lock_wait_samples']}/{f['pg_samples']} samples  "
        f"CPU {f['machine_busy_pct']:.0f}% busy: service {f['service_cpu_pct']:.0f}%, "
        f"PG {f['postgres_cpu_pct']:.0f}%, load generator {f['generator_cpu_pct']:.0f}%  "
        + (
            "errors " + ", ".join(f"{k}: {v}" for k, v in sorted(f["errors_by_kind"].items()))
            if errors
            else "errors 0"
        ),
        flush=flush,
    )
    print(
        "      "
        + "  ".join(
            f"{kind} {k['rps']:.0f}/s {k['p50_ms']:.1f}/{k['p99_ms']:.1f}"
            for kind, k in f["kinds"].items()
        )
        + "  (req/s, p50/p99 ms)",
        flush=flush,
    )


# --- setting up -------------------------------------------------------------------------------


def _post(base: str, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(
        f"{base}{path}",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        content=orjson.dumps(body),
    )
    if r.status_code != 201:
        raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text[:500]}")
    result: dict[str, Any] = r.json()
    return result


def make_world(dsn: str, tokens: Tokens, service: Server, *, tasks: int, owners: int) -> World:
    """The jail and its JMS client, the providers and theirs (made through the service)."""
    admin = tokens.issue(service.base)
    jail = (
        "Organization/"
        + _post(
            service.base, admin, "/fhir/Organization", _organization("Riverbend County Jail (soak)")
        )["id"]
    )
    tokens.register(JMS_CLIENT, jail, JAIL_SCOPES)
    providers = []
    for k in range(PROVIDERS):
        org = (
            "Organization/"
            + _post(
                service.base, admin, "/fhir/Organization", _organization(f"Provider {k} (soak)")
            )["id"]
        )
        client_id = f"soak-provider-{k}"
        tokens.register(client_id, org, "system/*.cruds")
        first = urlencode([("owner", org), ("status", "requested"), ("_cursor", "start")])
        providers.append(Provider(org, client_id, f"/fhir/Task?{first}&_count=50"))
    referrals = [
        orjson.dumps(referral_payload(providers[k % PROVIDERS].organization, variant=k)).decode()
        for k in range(200)
    ]
    ids = asyncio.run(
        _fetch(
            dsn,
            "SELECT id FROM resource WHERE resource_type = 'Task' ORDER BY random() LIMIT 20000",
        )
    )
    return World(
        base=service.base,
        tokens=tokens,
        providers=providers,
        referrals=referrals,
        task_ids=[str(r["id"]) for r in ids],
        owners=owners,
        assessment=assessment_example(),
    )


def print_verdict(soak: Soak, verdict: Verdict, workers: int) -> bool:
    """Print the verdict; True if the soak passed."""
    print()
    print(
        f"{soak.requests:,} requests in {soak.opts.seconds / 60:.1f} min, "
        f"{soak.opts.clients} clients, {workers} worker processes"
    )
    print(
        f"memory: median RSS {verdict.first_mb:.1f} MB (first half) -> {verdict.last_mb:.1f} MB "
        f"(second half), {verdict.growth:+.1%} (limit {soak.opts.rss_growth:+.0%}); "
        f"trend {verdict.slope_mb_per_min:+.2f} MB/min: " + ("FLAT" if verdict.flat else "GROWING")
    )
    if soak.errors:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(soak.errors.items()))
        print(f"errors: {sum(soak.errors.values())} ({listed})")
    else:
        print("errors: 0")
    if soak.exited is not None:
        print(f"the service exited during the run (status {soak.exited})")
    passed = verdict.passed and soak.exited is None
    print("SOAK " + ("PASSED" if passed else "FAILED"))
    return passed


def _mix(text: str) -> dict[str, float]:
    """``kind=weight,...`` (argparse type)."""
    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        if kind not in MIX:
            raise argparse.ArgumentTypeError(f"unknown kind {kind!r}: one of {', '.join(MIX)}")
        try:
            shares[kind] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: give kind=weight") from None
        if shares[kind] < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: a weight is not negative")
    return shares


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    length.add_argument("--seconds", type=float, help="how long, in seconds (short runs, tests)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds per report (default 60)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    p.add_argument("--tasks", type=int, default=100_000, help="Tasks loaded first (100,000)")
    p.add_argument(
        "--rss-growth",
        type=float,
        default=10.0,
        help="largest allowed growth of the median RSS, second half against first, in %% "
        "(default 10)",
    )
    p.add_argument(
        "--mix",
        type=_mix,
        default={},
        help="change the shares of kinds, e.g. search=0 or read=50,poll=0 (weights; default "
        + ",".join(f"{k}={v}" for k, v in MIX.items())
        + ")",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--pg",
        default=os.environ.get("HANDOFF_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="admin DSN of the PostgreSQL server (env HANDOFF_BENCH_PG)",
    )
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    a = p.parse_args(argv)
    seconds = a.seconds if a.seconds is not None else a.minutes * 60
    if seconds <= 0 or a.interval <= 0 or a.clients < 1:
        p.error("--minutes/--seconds, --interval and --clients must be positive")
    if not any({**MIX, **a.mix}.values()):
        p.error("--mix leaves nothing to send")
    return Options(
        admin_dsn=a.pg,
        seconds=seconds,
        interval=min(a.interval, seconds),
        clients=a.clients,
        workers=a.workers,
        tasks=a.tasks,
        rss_growth=a.rss_growth / 100,
        seed=a.seed,
        json_out=a.json,
        keep=a.keep,
        mix={**MIX, **a.mix},
    )


@contextmanager
def _service(dsn: str, workdir: Path, gauges: PoolGauges, opts: Options) -> Iterator[Server]:
    # A few pool samples per report: every 5 s, or a quarter of a shorter interval.
    every = min(5.0, max(0.5, opts.interval / 4))
    env = {**service_settings(dsn), **gauges.service_env(every)}
    server = Server("service", service_command(opts.workers), env, workdir)
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="handoff-soak-"))
    from service.storage.migrate import upgrade

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with scratch_database(opts.admin_dsn, keep=opts.keep) as dsn:
        print(f"database {dsn.rpartition('/')[2]}; work files in {workdir}", flush=True)
        upgrade(sqlalchemy_url(dsn))
        tokens = Tokens(dsn)
        tokens.setup()
        owners = max(1, min(1000, opts.tasks // 300))
        _load(dsn, "soak", opts.tasks, owners, Outcome(started=started, machine={}, options={}))
        with PoolGauges() as gauges, _service(dsn, workdir, gauges, opts) as service:
            world = make_world(dsn, tokens, service, tasks=opts.tasks, owners=owners)
            soak = Soak(opts, world, service, gauges, dsn)
            _, workers = soak.workers_rss()
            total = sum(opts.mix.values())
            print(
                f"soak from {started}: {opts.seconds / 60:.1f} min, {opts.clients} clients, "
                f"{workers} worker processes; mix "
                + ", ".join(f"{k} {v / total:.0%}" for k, v in opts.mix.items() if v)
                + f"; a report every {opts.interval:.0f} s",
                flush=True,
            )
            asyncio.run(soak.run())
    warmup = min(60.0, opts.seconds / 5)
    verdict = memory_verdict(
        soak.rss_samples,
        warmup=warmup,
        threshold=opts.rss_growth,
        errors=sum(soak.errors.values()),
    )
    passed = print_verdict(soak, verdict, workers)
    data = {
        "started": started,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in opts.__dict__.items()},
        "mix": opts.mix,
        "windows": soak.windows,
        "rss_samples": soak.rss_samples,
        "errors": dict(soak.errors),
        "service_exited": soak.exited,
        "verdict": {**verdict.__dict__, "passed": passed, "warmup_s": warmup},
    }
    text = json.dumps(data, indent=2)
    (workdir / "soak.json").write_text(text)
    if opts.json_out:
        opts.json_out.write_text(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
