"""Driving a server with wrk (its own process) and accounting for CPU while it runs.

CPU is read from /proc: the server's processes (uvicorn's and its workers'),
every PostgreSQL process (backends, plus what the postmaster reaped), wrk itself (as a child
of this process) and the whole machine, so a report can say who used the 2 cores.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LUA = Path(__file__).with_name("lua") / "requests.lua"
_TICK = os.sysconf("SC_CLK_TCK")


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian package 'wrk')")
    return found


def _proc_cpu(pid: int) -> float:
    """Seconds of CPU used by ``pid`` and the children it has reaped."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17)
    return sum(int(f) for f in fields[11:15]) / _TICK


def process_tree(pid: int) -> set[int]:
    """``pid`` and its live descendants (uvicorn's worker processes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                parents[int(entry)] = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return tree


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (uvicorn's worker processes)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += _proc_cpu(member)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (``VmRSS``), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def postgres_cpu(database: str | None = None) -> dict[int, float]:
    """CPU seconds per PostgreSQL process: backends serving ``database`` (by process title)
    and the shared writers (WAL writer, checkpointer, background writer); all if None.

    Other databases on the same server (other people's tests) are left out.
    """
    shared = (b"walwriter", b"checkpointer", b"background writer")
    found: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as fh:
                if fh.read().strip() != b"postgres":
                    continue
            if database is not None:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    title = fh.read()
                if f" {database} ".encode() not in title and not any(s in title for s in shared):
                    continue
            found[int(entry)] = _proc_cpu(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two samples by the processes alive at the second (new ones from 0)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def machine_cpu() -> tuple[float, float]:
    """(busy, total) seconds over all cores since boot."""
    with open("/proc/stat", "rb") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / _TICK, total / _TICK


@dataclass
class Run:
    """One wrk run against one server."""

    benchmark: str
    server: str
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    app_cpu_us: float  # server CPU per request (all its worker processes)
    db_cpu_us: float  # CPU of PostgreSQL's backends for the bench database, per request
    wrk_cpu_pct: float  # the generator's share of one core
    machine_busy_pct: float  # of all cores
    other_cpu_pct: float  # of all cores, used by none of the above (noise)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_wrk(
    *,
    benchmark: str,
    server: str,
    url: str,
    lines: Path,
    method: str,
    token: str,
    connections: int,
    duration: float,
    server_pid: int,
    database: str | None = None,
) -> Run:
    cmd = [
        wrk_path(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(lines),
        method,
        token,
    ]
    app0, db0, (busy0, total0) = tree_cpu(server_pid), postgres_cpu(database), machine_cpu()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    app1, db1, (busy1, total1) = tree_cpu(server_pid), postgres_cpu(database), machine_cpu()
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    w = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = w["duration_us"] / 1e6
    n = max(int(w["requests"]), 1)
    wrk_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    cores = os.cpu_count() or 1
    busy, total = busy1 - busy0, max(total1 - total0, 1e-9)
    app, db = app1 - app0, _cpu_delta(db0, db1)
    return Run(
        benchmark=benchmark,
        server=server,
        connections=connections,
        seconds=seconds,
        requests=int(w["requests"]),
        rps=w["requests"] / seconds,
        p50_ms=w["p50_us"] / 1000,
        p90_ms=w["p90_us"] / 1000,
        p99_ms=w["p99_us"] / 1000,
        max_ms=w["max_us"] / 1000,
        errors=sum(int(w[k]) for k in ("connect", "read", "write", "status", "timeout")),
        app_cpu_us=app / n * 1e6,
        db_cpu_us=db / n * 1e6,
        wrk_cpu_pct=100 * wrk_cpu / wall,
        machine_busy_pct=100 * busy / total,
        other_cpu_pct=max(0.0, 100 * (busy - app - db - wrk_cpu) / total) if cores else 0.0,
    )


def median_run(runs: list[Run]) -> Run:
    """Per-figure medians over rounds (each figure on its own)."""
    first = runs[0]

    def med(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in runs))

    return Run(
        benchmark=first.benchmark,
        server=first.server,
        connections=first.connections,
        seconds=sum(r.seconds for r in runs),
        requests=sum(r.requests for r in runs),
        rps=med("rps"),
        p50_ms=med("p50_ms"),
        p90_ms=med("p90_ms"),
        p99_ms=med("p99_ms"),
        max_ms=max(r.max_ms for r in runs),
        errors=sum(r.errors for r in runs),
        app_cpu_us=med("app_cpu_us"),
        db_cpu_us=med("db_cpu_us"),
        wrk_cpu_pct=med("wrk_cpu_pct"),
        machine_busy_pct=med("machine_busy_pct"),
        other_cpu_pct=med("other_cpu_pct"),
    )
