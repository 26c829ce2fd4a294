"""The CSV of ``/v1/measures``: one row per (measure, stratifier, value), the total first."""

from __future__ import annotations

import csv
import io
from typing import Any

CSV_HEADER = (
    "measure",
    "title",
    "stratifier",
    "value",
    "display",
    "numerator",
    "denominator",
    "rate",
    "median_hours",
)


def _text(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    # Facility names are free text: never let a spreadsheet read one as a formula.
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for measure in report["measures"]:
        for row in [{"stratifier": None, "value": None, **measure}, *measure["strata"]]:
            writer.writerow(
                [
                    measure["id"],
                    measure["title"],
                    row["stratifier"] or "",
                    _text(row["value"]),
                    _text(row.get("display")),
                    _text(row["numerator"]),
                    _text(row["denominator"]),
                    _text(row["rate"]),
                    _text(row["median_hours"]),
                ]
            )
    return buffer.getvalue()
