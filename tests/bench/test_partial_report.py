"""A benchmark run that fails part-way still prints what it measured before the failure."""

from __future__ import annotations

import pytest

from bench.run import Outcome, run_scenarios


def _measured(outcome: Outcome) -> None:
    figures = {"rps": 1000.0, "p50_ms": 5.0, "p99_ms": 9.0, "app_cpu_us": 400, "db_cpu_us": 100}
    outcome.summary.append(
        {
            "benchmark": "read Task by id",
            "connections": 32,
            "service": figures,
            "ceiling": {**figures, "rps": 2000.0},
            "rps_ratio": 0.5,
            "rps_ratio_rounds": [0.5],
            "p99_factor": 1.0,
            "target_rps_ratio": 0.6,
            "target_p99_factor": None,
            "met": False,
        }
    )


def _fails() -> None:
    raise RuntimeError("wrk exited with 1")


def test_a_failed_scenario_prints_the_rows_before_it(capsys: pytest.CaptureFixture[str]) -> None:
    outcome = Outcome(
        started="2026-11-27 20:00 UTC",
        machine={"cores": 2, "python": "Python 3.11", "postgres": "PostgreSQL 15"},
        options={"rounds": 1, "duration": 1.0, "workers": 2, "without": ()},
    )
    with pytest.raises(RuntimeError):
        run_scenarios(outcome, [("crud", lambda: _measured(outcome)), ("poll", _fails)])
    printed = capsys.readouterr().out
    assert "read Task by id" in printed and "MISSED" in printed
    assert "INCOMPLETE: the poll scenario stopped (RuntimeError: wrk exited with 1)" in printed


def test_nothing_measured_yet_says_which_scenario_stopped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outcome = Outcome(started="", machine={}, options={})
    with pytest.raises(RuntimeError):
        run_scenarios(outcome, [("crud", _fails)])
    assert capsys.readouterr().out.strip().startswith("INCOMPLETE: the crud scenario stopped")
