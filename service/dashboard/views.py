"""What the pages show, made from GET /v1/measures answers (the measures contract).

Only reshaping: the numbers are the answer's own. A suppressed cell ("<11") stays that text
everywhere (tables, chart labels, text equivalents) and is never drawn as a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

SUPPRESSED = "<11"
INTERCEPTS: dict[int, str] = {
    0: "0: Community services",
    1: "1: Law enforcement",
    2: "2: Initial detention and first court hearing",
    3: "3: Jails and courts",
    4: "4: Reentry",
    5: "5: Community corrections",
}
GROUP_LABELS: dict[str, str] = {
    "screening": "Screening",
    "education": "Overdose education",
    "naloxone": "Naloxone",
    "referral": "Referrals",
    "contact": "Contact after release",
    "treatment": "Treatment",
    "outcome": "Outcomes",
}
STRATIFIER_LABELS: dict[str, str] = {
    "month": "Month",
    "facility": "Facility",
    "intercept": "Intercept",
    "sex": "Sex",
    "age_band": "Age band",
    "stay_length": "Length of stay",
    "release_type": "Release type",
}
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_FACILITY = re.compile(r"^Location/[A-Za-z0-9\-.]{1,64}$")


class FilterError(ValueError):
    """A filter the page cannot use; the message says what to send instead."""


@dataclass(frozen=True)
class Filters:
    start: date
    end: date
    facility: str | None = None
    intercept: int | None = None

    def params(self) -> list[tuple[str, str]]:
        """The /v1/measures query for these filters."""
        query = [("from", self.start.isoformat()), ("to", self.end.isoformat())]
        if self.facility:
            query.append(("facility", self.facility))
        if self.intercept is not None:
            query.append(("intercept", str(self.intercept)))
        return query

    def trend_start(self) -> date:
        """First day of the twelve months that end with the period's last month."""
        year, month = self.end.year, self.end.month - 11
        while month < 1:
            year, month = year - 1, month + 12
        return date(year, month, 1)


def last_full_month(today: date) -> tuple[date, date]:
    end = today.replace(day=1) - timedelta(days=1)
    return end.replace(day=1), end


def month_bounds(text: str) -> tuple[date, date]:
    match = _MONTH.match(text)
    if not match:
        raise FilterError(f"month must be YYYY-MM (e.g. 2026-11), not {text[:20]!r}")
    start = date(int(match.group(1)), int(match.group(2)), 1)
    following = (start + timedelta(days=32)).replace(day=1)
    return start, following - timedelta(days=1)


def parse_filters(query: dict[str, str], *, today: date) -> Filters:
    """Filters from the page's query string (empty values mean "not filtered")."""
    default_start, default_end = last_full_month(today)
    start = _day(query.get("from"), "from") or default_start
    end = _day(query.get("to"), "to") or default_end
    if end < start:
        raise FilterError("'to' must not be before 'from'")
    facility = (query.get("facility") or "").strip() or None
    if facility is not None and not _FACILITY.match(facility):
        raise FilterError("facility must be a Location reference, e.g. Location/123")
    raw_intercept = (query.get("intercept") or "").strip()
    intercept = None
    if raw_intercept:
        if raw_intercept not in {str(i) for i in INTERCEPTS}:
            raise FilterError("intercept must be a number from 0 to 5")
        intercept = int(raw_intercept)
    return Filters(start=start, end=end, facility=facility, intercept=intercept)


def _day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FilterError(f"'{name}' must be a date as YYYY-MM-DD, not {value[:20]!r}") from None


def shown(value: Any) -> str:
    """A count as the page prints it ("<11" stays as it is; none is an em dash)."""
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def percent(rate: Any) -> str:
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        return f"{rate * 100:.1f} %"
    return "—"


def hours(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.1f} h"
    return "—"


def is_suppressed(value: Any) -> bool:
    return isinstance(value, str) and value == SUPPRESSED


@dataclass
class Row:
    label: str
    numerator: str
    denominator: str
    rate: str
    median: str
    suppressed: bool


@dataclass
class MeasureTable:
    id: str
    title: str
    group: str
    scoring: str
    unit: str
    total: Row
    strata: list[tuple[str, list[Row]]] = field(default_factory=list)


def _row(label: str, cell: dict[str, Any]) -> Row:
    return Row(
        label=label,
        numerator=shown(cell.get("numerator")),
        denominator=shown(cell.get("denominator")),
        rate=percent(cell.get("rate")),
        median=hours(cell.get("median_hours")),
        suppressed=is_suppressed(cell.get("numerator")) or is_suppressed(cell.get("denominator")),
    )


def stratum_label(stratifier: str, value: Any, facilities: dict[str, str]) -> str:
    text = str(value)
    if stratifier == "intercept" and isinstance(value, int | str) and str(value).isdigit():
        return INTERCEPTS.get(int(value), text)
    if stratifier == "facility":
        return facilities.get(text, text)
    return text


def tables(answer: dict[str, Any], facilities: dict[str, str]) -> list[MeasureTable]:
    result = []
    for m in answer.get("measures", []):
        grouped: dict[str, list[Row]] = {}
        for s in m.get("strata") or []:
            name = str(s.get("stratifier"))
            label = stratum_label(name, s.get("value"), facilities)
            grouped.setdefault(name, []).append(_row(label, s))
        result.append(
            MeasureTable(
                id=str(m.get("id")),
                title=str(m.get("title")),
                group=str(m.get("group")),
                scoring=str(m.get("scoring")),
                unit=str(m.get("unit")),
                total=_row("All", m),
                strata=[(STRATIFIER_LABELS.get(k, k), rows) for k, rows in grouped.items()],
            )
        )
    return result


def groups(measure_tables: list[MeasureTable]) -> list[tuple[str, list[MeasureTable]]]:
    order = list(GROUP_LABELS)
    seen: dict[str, list[MeasureTable]] = {}
    for t in measure_tables:
        seen.setdefault(t.group, []).append(t)
    ranked = sorted(seen, key=lambda g: order.index(g) if g in order else len(order))
    return [(GROUP_LABELS.get(g, g.title()), seen[g]) for g in ranked]


def facility_names(answer: dict[str, Any]) -> dict[str, str]:
    """Location reference -> the facility's name, as the answer's facility strata give it."""
    return {
        str(s["value"]): str(s["display"])
        for m in answer.get("measures", [])
        for s in m.get("strata") or []
        if s.get("stratifier") == "facility" and s.get("value") and s.get("display")
    }


def facility_values(answer: dict[str, Any]) -> list[str]:
    values = {
        str(s.get("value"))
        for m in answer.get("measures", [])
        for s in m.get("strata") or []
        if s.get("stratifier") == "facility" and s.get("value")
    }
    return sorted(values)


def cascade(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The cascade steps: label, count as shown, and the number to draw (None: suppressed)."""
    steps = []
    for step in answer.get("cascade") or []:
        count = step.get("count")
        drawable = isinstance(count, int) and not isinstance(count, bool)
        steps.append(
            {
                "step": step.get("step"),
                "label": step.get("label"),
                "shown": shown(count),
                "value": count if drawable else None,
                "suppressed": is_suppressed(count),
            }
        )
    return steps


def naloxone(answer: dict[str, Any]) -> list[dict[str, str]]:
    figures = []
    for m in answer.get("measures", []):
        if m.get("group") != "naloxone":
            continue
        if m.get("scoring") == "proportion":
            figure = percent(m.get("rate"))
            detail = f"{shown(m.get('numerator'))} of {shown(m.get('denominator'))} {m.get('unit')}"
        elif m.get("scoring") == "median":
            figure, detail = hours(m.get("median_hours")), "median"
        else:
            figure, detail = shown(m.get("numerator")), str(m.get("unit"))
        figures.append(
            {
                "id": str(m.get("id")),
                "title": str(m.get("title")),
                "figure": figure,
                "detail": detail,
            }
        )
    return figures


def trends(answer: dict[str, Any]) -> dict[str, Any]:
    """Monthly rates of the proportion measures: months, and per measure its series (a
    suppressed or empty month is a gap, shown as such in the table)."""
    months = sorted(
        {
            str(s.get("value"))
            for m in answer.get("measures", [])
            for s in m.get("strata") or []
            if s.get("stratifier") == "month"
        }
    )
    series = []
    for m in answer.get("measures", []):
        if m.get("scoring") != "proportion":
            continue
        by_month = {
            str(s.get("value")): s for s in m.get("strata") or [] if s.get("stratifier") == "month"
        }
        values, cells = [], []
        for month in months:
            s = by_month.get(month, {})
            rate = s.get("rate")
            number = rate if isinstance(rate, int | float) and not isinstance(rate, bool) else None
            values.append(round(number * 100, 1) if number is not None else None)
            if number is not None:
                cells.append(percent(number))
            elif is_suppressed(s.get("numerator")) or is_suppressed(s.get("denominator")):
                cells.append("suppressed")
            else:
                cells.append("—")
        series.append(
            {"id": m.get("id"), "title": m.get("title"), "values": values, "cells": cells}
        )
    return {"months": months, "series": series}
