"""``GET /v1/naloxone/summary``: OEND counts for a period, by month, facility or intercept.

Computed from stored resources through the caller's searches (``facts``), so each
caller counts only what it may see. Figures (the definitions the API documents):

* ``kits_total`` = ``kits_to_known_people`` + ``kits_anonymous`` (kits = quantity);
* ``kits_to_family_members``: the part of ``kits_to_known_people`` a family member received;
* ``people_given_kits``: distinct people with a kit (the dispense's subject);
* ``people_trained``: distinct people educated (Procedure), family members included;
* ``anonymous_education``: anonymous kits given with education;
* ``releases``: release events starting in the period; ``releases_with_kit``: of those, the
  ones with a kit handed to the person themself inside the release window;
* ``overdose_responses_reported``, of which ``reversals_reported`` (outcome survived or
  transported) and ``deaths_reported``.

The period is calendar days as recorded (``from``/``to`` inclusive). Events are grouped by
the month, facility or intercept of the event itself; a release by its referral's referring
facility and intercept. Distinct counts are distinct within each group, so a group's people
do not add up to the total when one person appears in two groups.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, Issue
from service.features.naloxone import facts as facts
from service.fhir.codes import SIM_INTERCEPTS
from service.fhir.dates import shifted
from service.fhir.oend_codes import ALIVE_OUTCOMES
from service.fhir.primitives import unsigned_int
from service.search.execute import run_search
from service.search.query import parse_search
from service.storage import repository as repo
from service.storage.db import read_connection
from service.telemetry import traced_workflow
from service.workflows.context import WorkflowContext

GroupBy = Literal["month", "facility", "intercept"]
NONE_KEY = "none"
METRICS = (
    "kits_total",
    "kits_to_known_people",
    "kits_to_family_members",
    "kits_anonymous",
    "people_given_kits",
    "people_trained",
    "anonymous_education",
    "releases",
    "releases_with_kit",
    "overdose_responses_reported",
    "reversals_reported",
    "deaths_reported",
)


@dataclass
class _Tally:
    known: float = 0.0
    family: float = 0.0
    anonymous: float = 0.0
    given: set[str] = field(default_factory=set)
    trained: set[str] = field(default_factory=set)
    anonymous_education: int = 0
    releases: int = 0
    with_kit: int = 0
    responses: int = 0
    reversals: int = 0
    deaths: int = 0

    def figures(self) -> dict[str, int | float]:
        values: dict[str, float] = {
            "kits_total": self.known + self.anonymous,
            "kits_to_known_people": self.known,
            "kits_to_family_members": self.family,
            "kits_anonymous": self.anonymous,
            "people_given_kits": len(self.given),
            "people_trained": len(self.trained),
            "anonymous_education": self.anonymous_education,
            "releases": self.releases,
            "releases_with_kit": self.with_kit,
            "overdose_responses_reported": self.responses,
            "reversals_reported": self.reversals,
            "deaths_reported": self.deaths,
        }
        return {k: int(v) if float(v).is_integer() else v for k, v in values.items()}


@dataclass(frozen=True)
class SummaryQuery:
    facility: str | None
    date_from: date | None
    date_to: date | None
    group_by: GroupBy | None


def _span(query: SummaryQuery) -> facts.Span:
    """The search range: the period's days in any UTC offset (±14 h), narrowed exactly later."""
    low = high = None
    # shifted: a day past 0001-01-01 or 9999-12-31 is the end of the calendar, not an overflow.
    if query.date_from:
        low = shifted(datetime.combine(query.date_from, time.min, UTC), -facts.DAY)
    if query.date_to:
        high = shifted(datetime.combine(query.date_to, time.max, UTC), facts.DAY)
    return facts.Span(low, high)


def _in_period(query: SummaryQuery, day: date) -> bool:
    return (query.date_from is None or day >= query.date_from) and (
        query.date_to is None or day <= query.date_to
    )


async def _facilities(conn: AsyncConnection, facility: str | None) -> set[str] | None:
    """The facility and, for an Organization, the Locations it manages; None: no filter."""
    if facility is None:
        return None
    rtype, _, rid = facility.partition("/")
    if rtype not in ("Location", "Organization") or not await repo.resource_exists(
        conn, rtype, rid
    ):
        raise BusinessRuleError(
            f"facility: {facility} is not known here",
            issues=[Issue("error", "not-found", f"{facility} is not known here", ("facility",))],
        )
    found = {facility}
    if rtype == "Organization":
        request = parse_search(
            "Location",
            [("organization", facility)],
            strict=True,
            default_count=1000,
            max_count=1000,
        )
        # Directory data: every client may read Locations.
        page = await run_search(conn, request)
        found |= {f"Location/{m.id}" for m in page.matches}
    return found


async def _label(conn: AsyncConnection, group_by: GroupBy | None, key: str) -> str:
    if key == NONE_KEY:
        return "not recorded"
    if group_by == "intercept":
        code = unsigned_int(key)  # written through FHIR, any code may stand here
        return SIM_INTERCEPTS.get(code, key) if code is not None else key
    if group_by == "facility":
        rtype, _, rid = key.partition("/")
        stored = await repo.get_current(conn, rtype, rid) if rid else None
        if stored is not None and stored.raw is not None:
            name = orjson.loads(stored.raw).get("name")
            if isinstance(name, str):
                return name
    return key


@traced_workflow(
    "workflow.naloxone_summary", resource_type="MedicationDispense", interaction="search"
)
async def naloxone_summary(ctx: WorkflowContext, query: SummaryQuery) -> dict[str, Any]:
    if query.date_from and query.date_to and query.date_from > query.date_to:
        raise BusinessRuleError("from is after to", expression=["from"])
    span = _span(query)
    async with read_connection(ctx.engine) as conn:
        allowed = await _facilities(conn, query.facility)
        kits = await facts.kits(conn, ctx, span)
        educations = await facts.educations(conn, ctx, span)
        responses = await facts.responses(conn, ctx, span)
        releases = [
            r
            for r in await facts.releases(conn, ctx, span)
            if _in_period(query, r.day) and (allowed is None or r.facility in allowed)
        ]
        if releases:
            # Windows may reach past the period: look for kits over the windows themselves.
            window = facts.Span(min(r.low for r in releases), max(r.high for r in releases))
            release_kits = await facts.kits(conn, ctx, window)
        else:
            release_kits = []

        def keep(day: date, facility: str | None) -> bool:
            return _in_period(query, day) and (allowed is None or facility in allowed)

        tallies: dict[str, _Tally] = {}
        total = _Tally()

        def key_of(day: date, facility: str | None, intercept: str | None) -> str:
            if query.group_by == "month":
                return day.strftime("%Y-%m")
            if query.group_by == "facility":
                return facility or NONE_KEY
            if query.group_by == "intercept":
                return intercept or NONE_KEY
            return "all"

        def add(
            day: date, facility: str | None, intercept: str | None, apply: Callable[[_Tally], None]
        ) -> None:
            apply(total)
            if query.group_by is not None:
                apply(tallies.setdefault(key_of(day, facility, intercept), _Tally()))

        for kit in kits:
            if not keep(kit.day, kit.facility):
                continue
            add(kit.day, kit.facility, kit.intercept, _kit_counter(kit))
        for edu in educations:
            if keep(edu.day, edu.facility):
                add(edu.day, edu.facility, edu.intercept, _trained(edu.person))
        for resp in responses:
            if keep(resp.day, resp.facility):
                add(resp.day, resp.facility, resp.intercept, _response_counter(resp.outcome))
        for rel in releases:
            found = facts.kit_in_hand(rel, release_kits) is not None
            add(rel.day, rel.facility, rel.intercept, _release_counter(found))

        groups = []
        for key in sorted(tallies):
            groups.append(
                {"group": key, "label": await _label(conn, query.group_by, key)}
                | tallies[key].figures()
            )
    return {
        "from": query.date_from.isoformat() if query.date_from else None,
        "to": query.date_to.isoformat() if query.date_to else None,
        "facility": query.facility,
        "group_by": query.group_by,
        "totals": total.figures(),
        "groups": groups,
    }


def _kit_counter(kit: facts.Kit) -> Callable[[_Tally], None]:
    def apply(t: _Tally) -> None:
        if kit.patient is None:
            t.anonymous += kit.quantity
            t.anonymous_education += int(kit.education)
            return
        t.known += kit.quantity
        t.given.add(kit.patient)
        if kit.via_family:
            t.family += kit.quantity

    return apply


def _trained(person: str) -> Callable[[_Tally], None]:
    def apply(t: _Tally) -> None:
        t.trained.add(person)

    return apply


def _response_counter(outcome: str | None) -> Callable[[_Tally], None]:
    def apply(t: _Tally) -> None:
        t.responses += 1
        t.reversals += int(outcome in ALIVE_OUTCOMES)
        t.deaths += int(outcome == "died")

    return apply


def _release_counter(with_kit: bool) -> Callable[[_Tally], None]:
    def apply(t: _Tally) -> None:
        t.releases += 1
        t.with_kit += int(with_kit)

    return apply


def summary_csv(summary: dict[str, Any]) -> str:
    """One row per group, then a ``total`` row; the same figures as the JSON."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["group", "label", *METRICS])
    for group in summary["groups"]:
        writer.writerow(
            [_cell(group["group"]), _cell(group["label"]), *(group[m] for m in METRICS)]
        )
    writer.writerow(["total", "", *(summary["totals"][m] for m in METRICS)])
    return buffer.getvalue()


def _cell(text: str) -> str:
    """Facility names are free text: never let a spreadsheet read one as a formula."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
