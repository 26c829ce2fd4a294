"""``python -m bench --tiny`` runs end to end and prints the comparison table, the same-work
ceiling's rows included.

Opt-in: HANDOFF_BENCH_SMOKE=1 PYTHONPATH=. pytest tests/bench (needs PostgreSQL and wrk).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.bench_smoke


def test_tiny_benchmark_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for label in (
        "read Task by id",
        "create Task",
        "open referral",
        "poll full page",
        "poll caught up",
    ):
        assert label in done.stdout
    results = json.loads(out.read_text())
    rows = {(s["benchmark"], s["connections"]) for s in results["summary"]}
    assert rows == {
        ("read Task by id", 32),
        ("create Task", 32),
        ("open referral", 32),
        ("poll full page", 32),
        ("poll full page", 4),
        ("poll caught up", 32),
        ("poll caught up", 4),
    }
    for s in results["summary"]:
        for who in ("service", "ceiling", "same_work"):
            assert s[who]["requests"] > 0 and s[who]["errors"] == 0, (s["benchmark"], who)
        assert s["rps_ratio"] > 0
        # the same-work ceiling's row, against the goal
        assert s["same_work_rps_ratio"] > 0 and s["goal_rps_ratio"] > 0
        assert isinstance(s["goal_met"], bool)
    assert "vs same-work" in done.stdout and "same-work" in done.stdout
    # captured from the service, and checked to write what the service writes per request
    assert set(results["same_work"]) == {
        "read",
        "create",
        "referral",
        "poll full page",
        "poll caught up",
    }
    writes = [c for c in results["checks"] if "writes what one to the service writes" in c]
    assert len(writes) == 5, results["checks"]
    assert any("AuditEvent 1 + " in c for c in writes if c.startswith("same-work read"))
    # The scratch database is dropped afterwards.
    name = done.stdout.split("database ", 1)[1].split(";", 1)[0]
    assert name.startswith("handoff_bench_")
    listed = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SELECT datname FROM pg_database"],
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode == 0:
        assert name not in listed.stdout.split()
