"""Experiments only: the service without a feature the issues require, to measure its share.

``python -m bench --without audit`` (or ``validation``, or both, comma-separated) starts the
service with this directory first on ``PYTHONPATH`` and ``HANDOFF_BENCH_WITHOUT`` set, so that
Python imports this module in the server process and in each uvicorn worker it spawns, before
the service. It then replaces, in the running process only:

- ``audit``: the AuditEvent of every read, search and write (42 CFR Part 2) with nothing;
- ``validation``: the R4 validation of every created or updated resource with nothing.

Nothing here is reachable from the service's own code or settings: a deployed Handoff always
audits and validates. The figures such a run prints are what that feature costs, not results.
"""

from __future__ import annotations

import os
from typing import Any

WITHOUT = {w.strip() for w in os.environ.get("HANDOFF_BENCH_WITHOUT", "").split(",") if w.strip()}


def _without_audit() -> None:
    from service.workflows import audit

    async def no_commit(*_args: Any, **_kwargs: Any) -> None:
        return None

    audit._commit = no_commit  # type: ignore[assignment]  # reads and searches
    audit.write_event = lambda *_args, **_kwargs: None  # writes


def _without_validation() -> None:
    from service.fhir import validate
    from service.workflows import bundles, resources

    def no_validation(*_args: Any, **_kwargs: Any) -> None:
        return None

    for module in (validate, resources, bundles):
        module.validate_resource = no_validation  # type: ignore[assignment]


if WITHOUT:
    unknown = WITHOUT - {"audit", "validation"}
    if unknown:
        raise SystemExit(f"HANDOFF_BENCH_WITHOUT: unknown {sorted(unknown)}")
    if "audit" in WITHOUT:
        _without_audit()
    if "validation" in WITHOUT:
        _without_validation()
