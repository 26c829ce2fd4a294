"""``python -m bench.measures --tiny`` loads a small year, asks /v1/measures as the
administrator and as one provider, and prints both rows (so bench/measures.py cannot rot).

Opt-in like the other benchmark smoke tests: HANDOFF_BENCH_SMOKE=1 (needs PostgreSQL).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.bench_smoke


def test_tiny_measures_benchmark_prints_both_views() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.measures", "--tiny"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"loaded 500 releases, [\d,]+ referrals", done.stdout)
    rows = [
        line
        for line in done.stdout.splitlines()
        if line.startswith(("administrator", "one provider"))
    ]
    assert len(rows) == 2, done.stdout
    for row in rows:
        measures, strata = (int(v) for v in row.split()[-2:])
        assert measures >= 10 and strata > measures, row
