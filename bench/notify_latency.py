"""Notification latency: from a Task change's commit to its notification at the receiver.

    python -m bench.notify_latency                  # 100 subscriptions, 50/s and 200/s, 20 s each
    python -m bench.notify_latency --duration 5     # shorter
    python -m bench.notify_latency --rates 50 --subscriptions 20

PostgreSQL (a scratch database, as ``python -m bench``), two API processes (``handoff serve
--no-worker``) and one ``handoff worker``, default settings. Each of N treatment programs has a
Subscription (SDOH Task topic, ``owner`` = itself, id-only) to its own path on a receiver in
this process; a jail client creates Tasks at the given rate, round-robin over the programs and
the two API processes. Latency = the receiver's arrival time minus the moment the jail got its
201 (the commit is a little earlier: the figures slightly under-state it). Three scenarios per
rate: all receivers healthy; program 0's receiver answering 500; program 0's receiver hanging
past the delivery timeout. Printed: p50, p99 and max of the healthy programs' notifications,
how many arrived, the achieved change rate and the writes that failed. Goal: p99 <= 1 s at 50
changes/s, and the healthy programs' p99 unchanged by the failing receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.run import ROOT, Server, Tokens, scratch_database, service_settings, sqlalchemy_url

BP = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
TOPIC = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
TIMEOUT_SECONDS = 2
PUBLIC_BASE = "http://handoff.bench.invalid"  # the one issuer and audience of both API processes


@dataclass
class Arrivals:
    """What the receiver saw: Task id -> arrival time, per program; and how it answers."""

    times: dict[int, dict[str, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    bad_mode: str = "ok"  # ok | 500 | hang (program 0 only)


def start_receiver(arrivals: Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            at = time.monotonic()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            program = int(self.path.rsplit("/", 1)[1])
            if program == 0 and arrivals.bad_mode == "hang":
                time.sleep(TIMEOUT_SECONDS + 3)
            status = 500 if program == 0 and arrivals.bad_mode == "500" else 200
            if status == 200:
                bundle = json.loads(body)
                with arrivals.lock:
                    seen = arrivals.times.setdefault(program, {})
                    for entry in bundle["entry"][1:]:
                        task_id = entry["fullUrl"].rsplit("/", 1)[1]
                        seen.setdefault(task_id, at)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def subscription(endpoint: str, owner: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "benchmark",
        "criteria": TOPIC,
        "_criteria": {
            "extension": [
                {"url": f"{BP}/backport-filter-criteria", "valueString": f"Task?owner={owner}"}
            ]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [{"url": f"{BP}/backport-payload-content", "valueCode": "id-only"}]
            },
        },
    }


def task(owner: str, i: int) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "approve"}]
        },
        "focus": {"reference": f"ServiceRequest/bench-{i}"},
        "for": {"reference": f"Patient/bench-{i}"},
        "requester": {"reference": "Organization/bench-jail"},
        "owner": {"reference": owner},
    }


async def make_changes(
    bases: list[str], token: str, owners: list[str], rate: int, seconds: float
) -> tuple[dict[str, tuple[int, float]], float, int]:
    """Create Tasks at ``rate`` per second; Task id -> (program, time its 201 arrived), the
    achieved rate, and how many writes failed (an answer other than 201, or no answer)."""
    made: dict[str, tuple[int, float]] = {}
    failed = 0
    clients = [
        httpx.AsyncClient(base_url=b, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        for b in bases
    ]
    start = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    total = int(rate * seconds)

    async def one(i: int) -> None:
        nonlocal failed
        program = i % len(owners)
        try:
            r = await clients[i % len(clients)].post(
                "/fhir/Task", json=task(owners[program], i), headers=FHIR_JSON
            )
        except httpx.HTTPError:
            failed += 1
            return
        if r.status_code == 201:
            made[r.json()["id"]] = (program, time.monotonic())
        else:
            failed += 1

    try:
        for i in range(total):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            t = asyncio.create_task(one(i))
            pending.add(t)
            t.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
    finally:
        for c in clients:
            await c.aclose()
    return made, len(made) / max(time.monotonic() - start, 1e-9), failed


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.notify_latency")
    parser.add_argument(
        "--pg",
        default=os.environ.get("HANDOFF_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--rates", default="50,200", help="changes per second, comma-separated")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of changes per scenario"
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    with scratch_database(args.pg, keep=args.keep) as dsn:
        from service.storage.migrate import upgrade

        upgrade(sqlalchemy_url(dsn))
        tokens = Tokens(dsn)
        tokens.setup()
        owners = [f"Organization/bench-p{i}" for i in range(args.subscriptions)]
        tokens.register("bench-jail", "Organization/bench-jail", "system/*.cruds")
        for i, owner in enumerate(owners):
            tokens.register(f"bench-p{i}", owner, "system/*.cruds")
        env = {
            **service_settings(dsn),
            "HANDOFF_SUBSCRIPTION_ALLOW_LOCAL_HTTP": "true",
            "HANDOFF_SUBSCRIPTION_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
            # Replicas behind one address, as deployed: a token is good at either of them.
            "HANDOFF_PUBLIC_BASE_URL": PUBLIC_BASE,
        }
        cmd = [sys.executable, "-m", "service", "serve", "--no-worker"]
        apis = [Server(f"api{i}", cmd, env, workdir) for i in range(2)]
        with open(workdir / "worker.log", "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "service", "worker", "--health-port", "0"],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        arrivals = Arrivals()
        receiver = start_receiver(arrivals)
        port = receiver.server_address[1]
        try:
            admin = {"Authorization": f"Bearer {tokens.issue(PUBLIC_BASE)}"}
            for name in ["bench-jail", *[o.split("/")[1] for o in owners]]:
                body = {"resourceType": "Organization", "id": name, "name": name}
                httpx.put(
                    f"{apis[0].base}/fhir/Organization/{name}",
                    json=body,
                    headers={**admin, **FHIR_JSON},
                    timeout=30,
                )
            for i, owner in enumerate(owners):
                h = {
                    "Authorization": f"Bearer {tokens.issue(PUBLIC_BASE, f'bench-p{i}')}",
                    **FHIR_JSON,
                }
                r = httpx.post(
                    f"{apis[0].base}/fhir/Subscription",
                    json=subscription(f"http://127.0.0.1:{port}/p/{i}", owner),
                    headers=h,
                    timeout=30,
                )
                r.raise_for_status()
            time.sleep(5)  # the handshakes
            jail = tokens.issue(PUBLIC_BASE, "bench-jail")
            rows = []
            for rate in rates:
                for mode in ("ok", "500", "hang"):
                    arrivals.bad_mode = mode
                    with arrivals.lock:
                        arrivals.times.clear()
                    made, achieved, failed = asyncio.run(
                        make_changes([a.base for a in apis], jail, owners, rate, args.duration)
                    )
                    deadline = time.monotonic() + 30
                    healthy = {tid: v for tid, v in made.items() if v[0] != 0}
                    while time.monotonic() < deadline:
                        with arrivals.lock:
                            got = sum(
                                tid in arrivals.times.get(p, {}) for tid, (p, _) in healthy.items()
                            )
                        if got == len(healthy):
                            break
                        time.sleep(0.2)
                    with arrivals.lock:
                        lat = [
                            arrivals.times[p][tid] - t
                            for tid, (p, t) in healthy.items()
                            if tid in arrivals.times.get(p, {})
                        ]
                    rows.append((rate, mode, achieved, failed, len(healthy), lat))
                    # Program 0 back to health and reactivated for the next scenario.
                    arrivals.bad_mode = "ok"
                    h = {"Authorization": f"Bearer {tokens.issue(PUBLIC_BASE, 'bench-p0')}"}
                    subs = httpx.get(
                        f"{apis[0].base}/fhir/Subscription", headers=h, timeout=30
                    ).json()
                    for e in subs.get("entry", []):
                        httpx.put(
                            f"{apis[0].base}/fhir/Subscription/{e['resource']['id']}",
                            json=e["resource"],
                            headers={**h, **FHIR_JSON},
                            timeout=30,
                        )
                    time.sleep(3)
            print()
            print(
                f"Notification latency, {args.subscriptions} subscriptions, 2 API processes + "
                f"1 worker (PostgreSQL), {args.duration:g} s per scenario; healthy programs only"
            )
            print(
                f"{'changes/s':>9} {'program 0':>11} {'achieved/s':>10} {'failed':>6} {'sent':>6} "
                f"{'arrived':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
            )
            for rate, mode, achieved, failed, sent, lat in rows:
                label = {"ok": "healthy", "500": "answers 500", "hang": "hangs"}[mode]
                if lat:
                    p50, p99, top = (
                        percentile(lat, 50) * 1000,
                        percentile(lat, 99) * 1000,
                        max(lat) * 1000,
                    )
                else:
                    p50 = p99 = top = float("nan")
                print(
                    f"{rate:>9} {label:>11} {achieved:>10.1f} {failed:>6} {sent:>6} {len(lat):>8} "
                    f"{p50:>8.0f} {p99:>8.0f} {top:>8.0f}"
                )
            if rows and rows[0][5]:
                print(f"(median of all: {statistics.median(rows[0][5]) * 1000:.0f} ms)")
        finally:
            receiver.shutdown()
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
            for a in apis:
                a.stop()


if __name__ == "__main__":
    main()
