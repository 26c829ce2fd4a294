"""``python -m bench --without audit,validation``: the experiment takes those out of the
benchmarked service's processes only, and only when asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import ROOT, parse_args, without_settings

_PROBE = """
from service.fhir import validate
from service.workflows import audit, resources

def outcome(call):
    try:
        call()
        return "passed"
    except Exception as exc:
        return type(exc).__name__

bad = {"resourceType": "Task", "status": "no-such-status"}
print(outcome(lambda: audit.write_event(None, interaction="create", stored=None, body=None,
                                        previous=None)))
print(outcome(lambda: validate.validate_resource(bad)))
print(outcome(lambda: resources.validate_resource(bad)))
"""


def _probe(env: dict[str, str]) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HANDOFF_BENCH_WITHOUT")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_without_audit_and_validation_in_the_service_process() -> None:
    env = without_settings(("audit", "validation"))
    assert Path(env["PYTHONPATH"].split(os.pathsep)[0]).name == "without"
    assert _probe(env) == ["passed", "passed", "passed"]


def test_the_service_is_untouched_without_the_experiment() -> None:
    assert without_settings(()) == {}
    # A write's AuditEvent needs a real context (the unpatched one fails on None), and the
    # bad Task is refused.
    assert _probe({}) == ["AttributeError", "InvalidResourceError", "InvalidResourceError"]


def test_without_takes_only_known_features() -> None:
    assert parse_args(["--without", "validation,audit"]).without == ("audit", "validation")
    with pytest.raises(SystemExit):
        parse_args(["--without", "tenancy"])
