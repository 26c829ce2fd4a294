"""``python -m bench.soak``: its verdict (always), and a few seconds of it end to end (opt-in,
like the benchmark's smoke test: HANDOFF_BENCH_SMOKE=1, needs PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import KINDS, memory_verdict, parse_args, percentile

ROOT = Path(__file__).resolve().parents[2]
MB = 2**20


def test_flat_memory_and_no_errors_pass() -> None:
    # Start-up growth during the warm-up is not held against the run.
    samples = [(float(t), (200 + min(t, 10) * 5) * MB) for t in range(0, 120)]
    verdict = memory_verdict(samples, warmup=20, threshold=0.05, errors=0)
    assert verdict.flat and verdict.passed
    assert verdict.first_mb == verdict.last_mb == 250
    assert verdict.slope_mb_per_min == pytest.approx(0)


def test_growing_memory_or_errors_fail() -> None:
    growing = [(float(t), (200 + t) * MB) for t in range(0, 120)]
    verdict = memory_verdict(growing, warmup=20, threshold=0.05, errors=0)
    assert not verdict.flat and not verdict.passed
    assert verdict.growth > 0.05
    assert verdict.slope_mb_per_min == pytest.approx(60)
    flat = [(float(t), 200 * MB) for t in range(0, 120)]
    assert not memory_verdict(flat, warmup=20, threshold=0.05, errors=1).passed


def test_percentile_and_arguments() -> None:
    assert percentile([], 99) == 0
    assert percentile([float(x) for x in range(1, 101)], 50) == 50
    assert percentile([float(x) for x in range(1, 101)], 99) == 99
    assert parse_args([]).seconds == 600
    assert parse_args(["--minutes", "0.5"]).seconds == 30
    short = parse_args(["--seconds", "5", "--interval", "60"])
    assert (short.seconds, short.interval) == (5, 5)
    with pytest.raises(SystemExit):
        parse_args(["--minutes", "1", "--seconds", "5"])


@pytest.mark.bench_smoke
def test_a_short_soak_reports_every_interval(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--seconds",
            "6",
            "--interval",
            "2",
            "--tasks",
            "3000",
            "--clients",
            "4",
            # Six seconds say nothing about memory: this checks the shape, and that no request
            # of any kind fails.
            "--rss-growth",
            "50",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[ 1] 0:00-0:02" in done.stdout and "SOAK PASSED" in done.stdout
    results = json.loads(out.read_text())
    windows = results["windows"]
    assert len(windows) >= 3
    for w in windows:
        assert set(w["kinds"]) == set(KINDS)
        assert w["requests"] > 0 and w["rss_mb"] > 0 and w["pg_samples"] > 0
        assert w["errors"] == {}
    for kind in KINDS:  # every kind ran, accepts included (Tasks the polls found)
        assert sum(w["kinds"][kind]["requests"] for w in windows) > 0, kind
    assert any(w["pool_samples"] for w in windows)  # the service's own pool gauges arrived
    assert results["verdict"]["passed"] and results["errors"] == {}
