"""The benchmark smoke test runs only when asked for (HANDOFF_BENCH_SMOKE=1).

Without it the test is deselected (reported as "deselected", not skipped): it starts two
servers and wrk against the local PostgreSQL and needs wrk installed. ``.ci/run`` installs wrk
and sets it, so the benchmark is exercised end to end on every CI run and cannot rot.
"""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("HANDOFF_BENCH_SMOKE") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench_smoke: runs python -m bench --tiny (opt-in)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    selected = [i for i in items if i.get_closest_marker("bench_smoke") is None]
    deselected = [i for i in items if i.get_closest_marker("bench_smoke") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
