"""TEMPORARY stand-in until the validation branch lands (replaced wholesale)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.errors import Issue


def operation_outcome(issues: Sequence[Issue], *, request_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": []}
    for i in issues:
        item: dict[str, Any] = {
            "severity": i.severity,
            "code": i.code,
            "diagnostics": i.diagnostics,
        }
        if i.expression:
            item["expression"] = list(i.expression)
        out["issue"].append(item)
    return out
