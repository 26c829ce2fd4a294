"""A/B of the service against itself at another commit: did a change make it faster?

    python -m bench.compare BASE [--rounds 4] [--duration 5] [--only read]

Runs the service of the working tree (B) and of git revision ``BASE`` (A, checked out in a
temporary worktree) side by side on one scratch database of 20,000 Tasks, drives both with
the same requests (read by id, caught-up poll and full poll page at 32 and 4 clients, create
Task at 32), alternating A B A B, and prints each one's CPU per request (service + PostgreSQL), the
figure that moves least with the machine's speed of the day, and requests/s. The database is
migrated by the working tree; BASE must run on that schema (new nullable columns are fine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.load import load_tasks
from bench.loadgen import Run, run_wrk
from bench.run import (
    ROOT,
    Server,
    Tokens,
    _fetch,
    _write_lines,
    create_service_request,
    create_task_lines,
    poll_lines,
    scratch_database,
    service_command,
    service_settings,
    sqlalchemy_url,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    p.add_argument("base", help="git revision of A, e.g. HEAD or main~3")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", help="only the benchmarks whose name contains this")
    p.add_argument(
        "--pg",
        default=os.environ.get("HANDOFF_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    a = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="handoff-compare-"))
    tree = workdir / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), a.base],
        check=True,
        capture_output=True,
    )
    from service.storage.migrate import upgrade

    try:
        with scratch_database(a.pg, keep=False) as dsn:
            upgrade(sqlalchemy_url(dsn))
            tokens = Tokens(dsn)
            tokens.setup()
            owners = max(1, min(1000, a.tasks // 300))
            asyncio.run(load_tasks(dsn, tasks=a.tasks, owners=owners))
            ids = asyncio.run(_fetch(dsn, "SELECT id FROM resource ORDER BY random() LIMIT 5000"))
            reads = _write_lines(workdir / "read.txt", [f"/fhir/Task/{r['id']}" for r in ids])
            full, ends = poll_lines(dsn)
            benches: list[tuple[str, Path, int]] = [
                ("read Task by id", reads, 32),
                ("poll caught up", _write_lines(workdir / "ends.txt", ends), 32),
                ("poll caught up", workdir / "ends.txt", 4),
                ("poll full page", _write_lines(workdir / "full.txt", full), 32),
                ("poll full page", workdir / "full.txt", 4),
            ]
            database = dsn.rpartition("/")[2]
            servers = [
                Server("A", service_command(a.workers), service_settings(dsn), workdir, root=tree),
                Server("B", service_command(a.workers), service_settings(dsn), workdir),
            ]
            focus = create_service_request(tokens, servers[1])
            bodies = create_task_lines(a.tasks, owners, focus)
            benches.append(("create Task", _write_lines(workdir / "create.txt", bodies), 32))
            try:
                for name, lines, conns in benches:
                    if a.only and a.only not in name:
                        continue
                    runs: dict[str, list[Run]] = {"A": [], "B": []}

                    def once(
                        s: Server,
                        seconds: float,
                        name: str = name,
                        lines: Path = lines,
                        conns: int = conns,
                    ) -> Run:
                        return run_wrk(
                            benchmark=name,
                            server=s.name,
                            url=s.base,
                            lines=lines,
                            method="POST" if name.startswith("create") else "GET",
                            token=tokens.issue(s.base),
                            connections=conns,
                            duration=seconds,
                            server_pid=s.pid,
                            database=database,
                        )

                    for s in servers:
                        once(s, 1.0)  # warm-up
                    for r in range(a.rounds):
                        for s in servers if r % 2 == 0 else servers[::-1]:
                            runs[s.name].append(once(s, a.duration))
                    line = [f"{name:<16} c={conns:<3}"]
                    for label in ("A", "B"):
                        cpu = [x.app_cpu_us + x.db_cpu_us for x in runs[label]]
                        rps = [x.rps for x in runs[label]]
                        line.append(
                            f"{label}: {statistics.median(cpu):6.0f} µs/req "
                            f"(app {statistics.median(x.app_cpu_us for x in runs[label]):5.0f}, "
                            f"PG {statistics.median(x.db_cpu_us for x in runs[label]):4.0f}) "
                            f"{statistics.median(rps):6.0f} req/s"
                        )
                    pairs = [
                        (b.app_cpu_us + b.db_cpu_us) / (x.app_cpu_us + x.db_cpu_us)
                        for x, b in zip(runs["A"], runs["B"], strict=True)
                    ]
                    line.append("B/A CPU " + ", ".join(f"{v:.2f}" for v in pairs))
                    print("  ".join(line), flush=True)
            finally:
                for s in servers:
                    s.stop()
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
