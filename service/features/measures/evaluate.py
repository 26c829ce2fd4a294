"""Measures evaluated by the database over the maintained facts (``facts``), with who-sees-what
and small-cell suppression.

Three statements answer a whole report, whatever the strata: one over ``measure_release``
(every proportion measure and the cascade, ``UNION ALL`` of one ``GROUP BY`` per stratifier),
one for the median hours to first contact (window functions, both dialects), one over
``measure_event`` (kits and reversals). Nothing is read into Python but the aggregates.

The period is whole days, inclusive, in UTC: ``released_at`` from ``from`` 00:00:00Z through
``to`` 23:59:59.999999Z (a release at 23:59:59 of the last day counts).

Who sees what: an organization counts the releases it is a party to (the jail that booked the
stay, or the requester or performer of one of its referrals) and, in referral numerators, only
the referrals it is a party to; kits and reversals it recorded. A client with no organization and
``handoff/admin`` counts everything.

Suppression (every report but the administrator's own full view; ``suppress=true`` asks for it
there too): a count from 1 to ``HANDOFF_MEASURES_MIN_CELL`` - 1 (default 11: 1..10) is shown as
``"<11"``; complementary suppression: when exactly one cell of a stratifier is suppressed while
the total is shown, the next smallest non-zero cell is suppressed too, so the total minus the
shown cells never gives a suppressed cell back. A rate or median is not shown when its counts
are suppressed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ForbiddenError, Issue
from service.features.measures.definitions import (
    BY_ID,
    CASCADE,
    EVENT_STRATIFIERS,
    MEASURES,
    STRATIFIERS,
    MeasureDef,
)
from service.features.measures.facts import CATEGORY_FLAGS, REFERRAL_FLAGS
from service.storage import repository as repo
from service.storage.db import read_connection
from service.storage.types import UtcDateTime
from service.telemetry import traced_workflow
from service.workflows.access import require_scope
from service.workflows.context import WorkflowContext

MAX_PERIOD_DAYS = 366 * 3
NONE_VALUE = "none"
_KEYS = {
    "month": "r.release_month",
    "facility": "r.facility",
    "intercept": "r.intercept",
    "sex": "r.sex",
    "age_band": "r.age_band",
    "stay_length": "r.stay_length",
    "release_type": "r.release_type",
}
_EVENT_KEYS = {"month": "e.month", "facility": "e.facility", "intercept": "e.intercept"}

Count = int | str  # an int, or the suppression mark ("<11")


@dataclass(frozen=True)
class MeasureQuery:
    date_from: date
    date_to: date
    measures: tuple[str, ...] = ()
    stratify: tuple[str, ...] = ()
    facility: str | None = None
    intercept: int | None = None
    suppress: bool | None = None  # None: as the caller's view requires
    # An administrator's report as this organization sees it (suppressed); others: their own.
    organization: str | None = None


@dataclass
class Cell:
    stratifier: str | None
    value: str | None
    denominator: float | None
    numerator: float
    median: float | None = None
    shown: dict[str, bool] = field(default_factory=lambda: {"n": True, "d": True})


def _bad(message: str, field_name: str) -> BusinessRuleError:
    return BusinessRuleError(message, issues=[Issue("error", "invalid", message, (field_name,))])


def check_query(query: MeasureQuery) -> None:
    if query.date_to < query.date_from:
        raise _bad(
            f"to ({query.date_to}) is before from ({query.date_from}); give from <= to", "to"
        )
    if (query.date_to - query.date_from).days + 1 > MAX_PERIOD_DAYS:
        raise _bad(
            f"The period is longer than 3 years ({MAX_PERIOD_DAYS} days); ask for a shorter one",
            "from",
        )
    unknown = [m for m in query.measures if m not in BY_ID]
    if unknown:
        raise _bad(f"Unknown measure {', '.join(unknown)}; known: {', '.join(BY_ID)}", "measure")
    bad = [s for s in query.stratify if s not in STRATIFIERS]
    if bad:
        raise _bad(
            f"Unknown stratifier {', '.join(bad)}; known: {', '.join(STRATIFIERS)}", "stratify"
        )
    if query.intercept is not None and not 0 <= query.intercept <= 5:
        raise _bad("intercept is a Sequential Intercept Model intercept, 0 to 5", "intercept")


@dataclass(frozen=True)
class Viewer:
    organization: str | None  # None: everything (administrator)
    suppress: bool
    min_cell: int


def viewer_of(ctx: WorkflowContext, query: MeasureQuery) -> Viewer:
    principal = ctx.principal
    require_scope(principal, "MeasureReport", "r")
    min_cell = ctx.settings.measures_min_cell
    if principal is None or (principal.is_admin and principal.organization is None):
        if query.organization is not None:
            return Viewer(query.organization, True, min_cell)
        return Viewer(None, bool(query.suppress), min_cell)
    if query.organization is not None and query.organization != principal.organization:
        raise ForbiddenError(
            f"A client of {principal.organization} reports for its own organization only, "
            f"not {query.organization}"
        )
    if principal.organization is None:
        raise ForbiddenError(
            "Measures are reported for the organization a client acts for; this client has no "
            "organization (an administrator's client, with handoff/admin, sees all)"
        )
    return Viewer(principal.organization, True, min_cell)


def _bounds(query: MeasureQuery) -> tuple[datetime, datetime]:
    low = datetime.combine(query.date_from, time.min, UTC)
    high = datetime.combine(query.date_to, time.max, UTC)  # the last microsecond of the day
    return low, high


def _party(alias: str) -> str:
    return f"({alias}.requester = :org OR {alias}.performer = :org)"


_COLUMNS = (
    "release_month, facility, intercept, sex, age_band, stay_length, release_type, stay_hours, "
    "at_risk, screened_at, screened_24h, screened_72h, educated, naloxone_in_hand, "
    "contact_hours, contacted_24h, contacted_72h, treatment_14d, engaged_34d, deceased_at, "
    "rebooked_12m"
)


def _base(viewer: Viewer, query: MeasureQuery) -> str:
    """``WITH base``: the period's releases the viewer counts (``base r`` in the report), with
    their referral flags: as stored for the administrator (every referral), else from the
    referrals the organization is a party to (``f``, aggregated once)."""
    where = ["r.released_at >= :low", "r.released_at <= :high"]
    if query.facility is not None:
        where.append("r.facility = :facility")
    if query.intercept is not None:
        where.append("r.intercept = :intercept")
    columns = ", ".join(f"r.{c.strip()}" for c in _COLUMNS.split(","))
    if viewer.organization is None:
        flags = ", ".join(f"r.{flag}" for flag in REFERRAL_FLAGS)
        return (
            f"WITH base AS (SELECT {columns}, {flags} FROM measure_release r "
            f"WHERE {' AND '.join(where)}) "
        )
    period = " AND ".join(where[:2])
    flags = ", ".join(
        f"MAX(CASE WHEN p.category = '{category}' AND p.accepted_before_release = 1 "
        f"THEN 1 ELSE 0 END) AS {flag}"
        for category, flag in CATEGORY_FLAGS.items()
    )
    chosen = ", ".join(f"COALESCE(f.{flag}, 0) AS {flag}" for flag in CATEGORY_FLAGS.values())
    where.append("(r.organization = :org OR f.release_id IS NOT NULL)")
    return (
        f"WITH f AS (SELECT p.release_id, {flags}, MAX(p.accepted_before_release) AS a_any "
        "FROM measure_referral p JOIN measure_release r ON r.release_id = p.release_id "
        f"WHERE {period} AND {_party('p')} GROUP BY p.release_id), "
        f"base AS (SELECT {columns}, {chosen}, COALESCE(f.a_any, 0) AS a_any, "
        "CASE WHEN f.release_id IS NULL THEN 0 ELSE 1 END AS referred "
        "FROM measure_release r LEFT JOIN f ON f.release_id = r.release_id "
        f"WHERE {' AND '.join(where)}) "
    )


def _numerator_sql(measure: MeasureDef) -> str:
    assert measure.numerator is not None
    if measure.referral_category is not None:
        return f"{measure.numerator} AND r.{CATEGORY_FLAGS[measure.referral_category]} = 1"
    return measure.numerator


def _sum(condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


def _params(viewer: Viewer, query: MeasureQuery) -> tuple[dict[str, Any], list[Any]]:
    low, high = _bounds(query)
    params: dict[str, Any] = {"low": low, "high": high}
    if viewer.organization is not None:
        params["org"] = viewer.organization
    if query.facility is not None:
        params["facility"] = query.facility
    if query.intercept is not None:
        params["intercept"] = str(query.intercept)
    binds = [bindparam("low", type_=UtcDateTime()), bindparam("high", type_=UtcDateTime())]
    return params, binds


async def _release_cells(
    conn: AsyncConnection,
    viewer: Viewer,
    query: MeasureQuery,
    measures: list[MeasureDef],
    stratify: tuple[str, ...],
) -> tuple[dict[str, list[Cell]], dict[str, float]]:
    proportion = [m for m in measures if m.scoring == "proportion"]
    columns: list[str] = []
    for i, m in enumerate(proportion):
        assert m.denominator is not None
        columns.append(f"{_sum(m.denominator)} AS d{i}")
        columns.append(f"{_sum(_numerator_sql(m))} AS n{i}")
    for j, (_, _, condition) in enumerate(CASCADE):
        columns.append(f"{_sum(condition)} AS c{j}")
    selects = [f"SELECT '' AS s, '' AS k, COUNT(*) AS total, {', '.join(columns)} FROM base r"]
    for name in stratify:
        key = _KEYS[name]
        selects.append(
            f"SELECT '{name}' AS s, COALESCE({key}, '{NONE_VALUE}') AS k, COUNT(*) AS total, "
            f"{', '.join(columns)} FROM base r GROUP BY {key}"
        )
    params, binds = _params(viewer, query)
    stmt = text(_base(viewer, query) + " UNION ALL ".join(selects)).bindparams(*binds)
    cells: dict[str, list[Cell]] = {m.id: [] for m in proportion}
    cascade: dict[str, float] = {step: 0 for step, _, _ in CASCADE}
    for row in (await conn.execute(stmt, params)).mappings():
        stratifier = row["s"] or None
        value = row["k"] if stratifier else None
        for i, m in enumerate(proportion):
            cells[m.id].append(
                Cell(stratifier, value, float(row[f"d{i}"] or 0), float(row[f"n{i}"] or 0))
            )
        if stratifier is None:
            for j, (step, _, _) in enumerate(CASCADE):
                cascade[step] = float(row[f"c{j}"] or 0)
    return cells, cascade


async def _median_cells(
    conn: AsyncConnection,
    viewer: Viewer,
    query: MeasureQuery,
    measure: MeasureDef,
    stratify: tuple[str, ...],
) -> list[Cell]:
    assert measure.numerator is not None
    where = measure.numerator
    selects: list[str] = []
    for name in ("", *stratify):
        key = _KEYS[name] if name else "''"
        partition = f"PARTITION BY {key} " if name else ""
        selects.append(
            f"SELECT '{name}' AS s, k, COUNT(*) AS n, "
            "AVG(CASE WHEN rn IN ((c + 1) / 2, (c + 2) / 2) THEN h END) AS median "
            f"FROM (SELECT COALESCE({key}, '{NONE_VALUE}') AS k, r.contact_hours AS h, "
            f"ROW_NUMBER() OVER ({partition}ORDER BY r.contact_hours) AS rn, "
            f"COUNT(*) OVER ({partition.strip()}) AS c "
            f"FROM base r WHERE {where}) t{len(selects)} GROUP BY k"
        )
    params, binds = _params(viewer, query)
    stmt = text(_base(viewer, query) + " UNION ALL ".join(selects)).bindparams(*binds)
    out = []
    found_total = False
    for row in (await conn.execute(stmt, params)).mappings():
        stratifier = row["s"] or None
        found_total |= stratifier is None
        median = float(row["median"]) if row["median"] is not None else None
        out.append(
            Cell(stratifier, row["k"] if stratifier else None, None, float(row["n"]), median)
        )
    if not found_total:
        out.insert(0, Cell(None, None, None, 0.0, None))
    return out


async def _event_cells(
    conn: AsyncConnection,
    viewer: Viewer,
    query: MeasureQuery,
    measures: list[MeasureDef],
    stratify: tuple[str, ...],
) -> dict[str, list[Cell]]:
    where = ["e.occurred_at >= :low", "e.occurred_at <= :high"]
    if viewer.organization is not None:
        where.append("e.organization = :org")
    if query.facility is not None:
        where.append("e.facility = :facility")
    if query.intercept is not None:
        where.append("e.intercept = :intercept")
    condition = " AND ".join(where)
    selects = [
        f"SELECT '' AS s, e.kind AS kind, '' AS k, SUM(e.quantity) AS q "
        f"FROM measure_event e WHERE {condition} GROUP BY e.kind"
    ]
    for name in stratify:
        if name not in EVENT_STRATIFIERS:
            continue
        key = _EVENT_KEYS[name]
        selects.append(
            f"SELECT '{name}' AS s, e.kind AS kind, COALESCE({key}, '{NONE_VALUE}') AS k, "
            f"SUM(e.quantity) AS q FROM measure_event e WHERE {condition} GROUP BY e.kind, {key}"
        )
    params, binds = _params(viewer, query)
    stmt = text(" UNION ALL ".join(selects)).bindparams(*binds)
    by_kind: dict[str, list[Cell]] = {}
    for row in (await conn.execute(stmt, params)).mappings():
        stratifier = row["s"] or None
        by_kind.setdefault(row["kind"], []).append(
            Cell(stratifier, row["k"] if stratifier else None, None, float(row["q"] or 0))
        )
    out = {}
    for m in measures:
        cells = by_kind.get(m.event_kind or "", [])
        if not any(c.stratifier is None for c in cells):
            cells.insert(0, Cell(None, None, None, 0.0))
        out[m.id] = cells
    return out


# --- suppression --------------------------------------------------------------------------


def _small(value: float | None, min_cell: int) -> bool:
    return value is not None and 0 < value < min_cell


def suppress_cells(cells: list[Cell], min_cell: int) -> None:
    """Primary and complementary suppression of numerators and denominators, per stratifier."""
    for key, attr in (("n", "numerator"), ("d", "denominator")):
        for cell in cells:
            cell.shown[key] = not _small(getattr(cell, attr), min_cell)
        total = next((c for c in cells if c.stratifier is None), None)
        stratifiers = {c.stratifier for c in cells if c.stratifier is not None}
        for name in stratifiers:
            group = [c for c in cells if c.stratifier == name]
            hidden = [c for c in group if not c.shown[key]]
            if len(hidden) != 1 or total is None or not total.shown[key]:
                continue
            candidates = [c for c in group if c.shown[key] and (getattr(c, attr) or 0) > 0]
            if candidates:
                smallest = min(candidates, key=lambda c: (getattr(c, attr), str(c.value)))
                smallest.shown[key] = False


# --- the report ---------------------------------------------------------------------------


def _count(value: float | None, shown: bool, mark: str) -> Count | float | None:
    if value is None:
        return None
    if not shown:
        return mark
    return int(value) if float(value).is_integer() else value


def _cell_json(measure: MeasureDef, cell: Cell, mark: str) -> dict[str, Any]:
    numerator = _count(cell.numerator, cell.shown["n"], mark)
    denominator = (
        _count(cell.denominator, cell.shown["d"], mark) if measure.scoring == "proportion" else None
    )
    rate = None
    if measure.scoring == "proportion" and cell.shown["n"] and cell.shown["d"] and cell.denominator:
        rate = round(cell.numerator / cell.denominator, 4)
    median = None
    if measure.scoring == "median" and cell.shown["n"] and cell.median is not None:
        median = round(cell.median, 2)
    return {
        "denominator": denominator,
        "numerator": numerator,
        "rate": rate,
        "median_hours": median,
    }


def _facility_display(cell: Cell, names: dict[str, str]) -> str | None:
    """A facility stratum's name: the Location's, or the value itself where the custody stay
    named its facility by name only (a JMS facility without a Location)."""
    if cell.stratifier != "facility" or cell.value in (None, NONE_VALUE):
        return None
    value = str(cell.value)
    return names.get(value) if value.startswith("Location/") else value


async def _facility_names(conn: AsyncConnection, cells: dict[str, list[Cell]]) -> dict[str, str]:
    """Location reference -> its name, for the facility strata (a handful per report)."""
    refs = {
        str(c.value)
        for mine in cells.values()
        for c in mine
        if c.stratifier == "facility" and str(c.value).startswith("Location/")
    }
    names: dict[str, str] = {}
    for ref in sorted(refs):
        stored = await repo.get_current(conn, "Location", ref.split("/", 1)[1])
        if stored is not None and stored.raw is not None:
            name = json.loads(stored.raw).get("name")
            if isinstance(name, str) and name:
                names[ref] = name
    return names


@traced_workflow("workflow.measures", resource_type="MeasureReport", interaction="search")
async def evaluate(ctx: WorkflowContext, query: MeasureQuery) -> dict[str, Any]:
    """The report of ``/v1/measures`` (and the numbers of ``$evaluate-measure``)."""
    viewer = viewer_of(ctx, query)  # the scope first: no token, no answer about the query
    check_query(query)
    measures = [BY_ID[m] for m in query.measures] if query.measures else list(MEASURES)
    stratify = tuple(dict.fromkeys(query.stratify))
    async with read_connection(ctx.engine) as conn:
        cells, cascade = await _release_cells(conn, viewer, query, measures, stratify)
        for m in measures:
            if m.scoring == "median":
                cells[m.id] = await _median_cells(conn, viewer, query, m, stratify)
        counted = [m for m in measures if m.scoring == "count"]
        if counted:
            cells.update(await _event_cells(conn, viewer, query, counted, stratify))
        names = await _facility_names(conn, cells)
    mark = f"<{viewer.min_cell}"
    out = []
    for m in measures:
        mine = cells[m.id]
        if viewer.suppress:
            suppress_cells(mine, viewer.min_cell)
        total = next(c for c in mine if c.stratifier is None)
        order = {name: i for i, name in enumerate(stratify)}
        strata = sorted(
            (c for c in mine if c.stratifier is not None),
            key=lambda c: (order.get(c.stratifier or "", 99), str(c.value)),
        )
        out.append(
            {
                "id": m.id,
                "url": m.url,
                "title": m.title,
                "group": m.group,
                "scoring": m.scoring,
                "unit": m.unit,
                **_cell_json(m, total, mark),
                "strata": [
                    {
                        "stratifier": c.stratifier,
                        "value": c.value,
                        "display": _facility_display(c, names),
                        **_cell_json(m, c, mark),
                    }
                    for c in strata
                ],
            }
        )
    cascade_json = []
    for step, label, _ in CASCADE:
        value = cascade[step]
        shown = not (viewer.suppress and _small(value, viewer.min_cell))
        cascade_json.append({"step": step, "label": label, "count": _count(value, shown, mark)})
    return {
        "period": {"from": query.date_from.isoformat(), "to": query.date_to.isoformat()},
        "scope": "all" if viewer.organization is None else "organization",
        "organization": viewer.organization,
        "suppression": {"applied": viewer.suppress, "min_cell": viewer.min_cell, "shown_as": mark},
        "filters": {"facility": query.facility, "intercept": query.intercept},
        "measures": out,
        "cascade": cascade_json,
    }
