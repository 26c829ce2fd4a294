"""Stored OEND resources read back as plain facts (kits, trainings, responses, releases).

Every read goes through the workflow search (``resources.search_in`` with the caller's
context), so tenancy and scopes apply: a caller only ever counts what it may see. Facts come
from any write path: the /v1 API or FHIR resources a program POSTs itself. What is recognized:

* a kit: a ``completed`` MedicationDispense (kit to a known person) or SupplyDelivery (without a
  patient: anonymous) whose product is single-ingredient naloxone (``RESCUE_NALOXONE``, inline
  or through a referenced Medication); kits = ``quantity.value`` (1 when absent);
* education: a ``completed`` Procedure coded SNOMED 460831000124102 or ``oend#oend``; the person
  educated is the R5 ``focus`` RelatedPerson when present, else the subject;
* an overdose response: an Observation coded ``oend#overdose-response`` (final, amended or
  corrected), the outcome from its value;
* a release: a referral ServiceRequest (category SNOMED 3457005, not entered-in-error) and its
  window, ``occurrencePeriod`` [start, end], or start ± 1 day when it has no end. Overlapping
  windows of one person's referrals are one release (two referrals for one release are common).

Dates are read as recorded: an event's calendar day is the day in its own UTC offset (what the
staff member saw), its instant is used for windows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.features.referrals import FACILITY_EXTENSION
from service.fhir import oend_codes as oend
from service.fhir.codes import ADMINISTERED_AT_EXTENSION, SIM_EXTENSION, SNOMED
from service.fhir.dates import format_instant, parse_range, shifted
from service.storage import repository as repo
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

DAY = timedelta(days=1)
_ONE_MS = timedelta(milliseconds=1)
_PEOPLE_PER_SEARCH = 100  # patient=a,b,… values in one search
REFERRAL_CATEGORY = f"{SNOMED}|3457005"
EDUCATION_QUERY = ",".join(f"{c['system']}|{c['code']}" for c in oend.EDUCATION_CODES)
RESPONSE_QUERY = f"{oend.OEND_SYSTEM}|overdose-response"
RESPONSE_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True)
class Span:
    """A search range: instants, widened by the caller as needed."""

    low: datetime | None
    high: datetime | None

    def params(self, name: str) -> list[tuple[str, str]]:
        out = []
        if self.low is not None:
            out.append((name, f"ge{format_instant(self.low)}"))
        if self.high is not None:
            out.append((name, f"le{format_instant(self.high)}"))
        return out


@dataclass(frozen=True)
class Kit:
    resource: str  # MedicationDispense/<id> or SupplyDelivery/<id>
    at: datetime
    day: date
    quantity: float
    patient: str | None  # Patient/<id>; None: anonymous
    via_family: bool  # received by a RelatedPerson, not the person
    facility: str | None
    intercept: str | None
    education: bool  # anonymous kits: education given (known people: see Education)


@dataclass(frozen=True)
class Education:
    resource: str
    day: date
    person: str  # Patient/<id> or RelatedPerson/<id>
    facility: str | None
    intercept: str | None


@dataclass(frozen=True)
class Response:
    resource: str
    day: date
    outcome: str | None
    facility: str | None
    intercept: str | None


@dataclass(frozen=True)
class Release:
    patient: str
    start: datetime
    day: date
    low: datetime
    high: datetime
    referrals: tuple[str, ...]
    facility: str | None
    intercept: str | None


# --- small readers -------------------------------------------------------------------------


def instant(value: Any) -> datetime | None:
    rng = parse_range(value) if isinstance(value, str) else None
    return rng[0] if rng else None


def day_of(value: Any) -> date | None:
    """The calendar day as recorded (needs day precision)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _ext(resource: dict[str, Any], url: str) -> Any:
    for ext in resource.get("extension", []) or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


def _ref(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) and ref else None


def intercept_of(resource: dict[str, Any]) -> str | None:
    coding = _ext(resource, SIM_EXTENSION)
    code = coding.get("code") if isinstance(coding, dict) else None
    return str(code) if code is not None else None


def facility_of(resource: dict[str, Any]) -> str | None:
    """Where: our administered-at extension, else the resource's own Location element."""
    found = _ref(_ext(resource, ADMINISTERED_AT_EXTENSION))
    if found:
        return found
    for element in ("location", "destination"):
        found = _ref(resource.get(element))
        if found:
            return found
    return None


def _quantity(value: Any) -> float:
    number = value.get("value") if isinstance(value, dict) else None
    return float(number) if isinstance(number, int | float) else 1.0


async def search_all(
    conn: AsyncConnection, ctx: WorkflowContext, resource_type: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Every match, page after page, as the caller may see them."""
    request = wf.parse_search_params(
        ctx, resource_type, [*params, ("_count", str(ctx.settings.max_page_size))], strict=True
    )
    return [
        orjson.loads(m.raw)
        async for page in wf.search_pages(conn, ctx, request)
        for m in page.matches
        if m.raw
    ]


class KitParts(NamedTuple):
    """Where a kit record (MedicationDispense or SupplyDelivery) keeps its product, quantity and
    date: read alike by the facts and by the write rule that checks them."""

    product: dict[str, Any]  # the element naming the product, inline or by reference
    inline: str
    reference: str
    quantity: Any  # the Quantity element, if any
    when: Any
    quantity_path: str  # FHIRPath of the quantity's value and of the date, for messages
    when_path: str


def kit_parts(resource: dict[str, Any]) -> KitParts:
    if resource.get("resourceType") == "MedicationDispense":
        return KitParts(
            resource,
            "medicationCodeableConcept",
            "medicationReference",
            resource.get("quantity"),
            resource.get("whenHandedOver"),
            "MedicationDispense.quantity.value",
            "MedicationDispense.whenHandedOver",
        )
    item = resource.get("suppliedItem") or {}
    when = resource.get("occurrenceDateTime") or (resource.get("occurrencePeriod") or {}).get(
        "start"
    )
    return KitParts(
        item,
        "itemCodeableConcept",
        "itemReference",
        item.get("quantity"),
        when,
        "SupplyDelivery.suppliedItem.quantity.value",
        "SupplyDelivery.occurrence",
    )


class Medications:
    """Medication resources referenced by dispenses (directory data, readable by all)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.cache: dict[str, bool] = {}

    async def is_naloxone(self, kit: KitParts) -> bool:
        if kit.inline in kit.product:
            return oend.is_rescue_naloxone(kit.product[kit.inline])
        target = _ref(kit.product.get(kit.reference))
        if not target or not target.startswith("Medication/"):
            return False
        if target not in self.cache:
            stored = await repo.get_current(self.conn, "Medication", target.split("/", 1)[1])
            body = orjson.loads(stored.raw) if stored and stored.raw else {}
            self.cache[target] = oend.is_rescue_naloxone(body.get("code"))
        return self.cache[target]


# --- facts ---------------------------------------------------------------------------------


async def kits(
    conn: AsyncConnection, ctx: WorkflowContext, span: Span, *, patient: str | None = None
) -> list[Kit]:
    medications = Medications(conn)
    out: list[Kit] = []
    who = [("patient", patient)] if patient else []
    for md in await search_all(
        conn, ctx, "MedicationDispense", [*who, *span.params("whenhandedover")]
    ):
        kit = kit_parts(md)
        at, day = instant(kit.when), day_of(kit.when)
        subject = _ref(md.get("subject"))
        if (
            md.get("status") != "completed"
            or at is None
            or day is None
            or not subject
            or not subject.startswith("Patient/")
            or not await medications.is_naloxone(kit)
        ):
            continue
        receivers = [_ref(r) for r in md.get("receiver", []) or []]
        via_family = bool(_ref(_ext(md, oend.RECEIVER_R5_EXTENSION))) or any(
            r and r.startswith("RelatedPerson/") for r in receivers
        )
        out.append(
            Kit(
                resource=f"MedicationDispense/{md['id']}",
                at=at,
                day=day,
                quantity=_quantity(kit.quantity),
                patient=subject,
                via_family=via_family,
                facility=facility_of(md),
                intercept=intercept_of(md),
                education=False,
            )
        )
    for sd in await search_all(conn, ctx, "SupplyDelivery", [*who, *span.params("date")]):
        kit = kit_parts(sd)
        at, day = instant(kit.when), day_of(kit.when)
        if (
            sd.get("status") != "completed"
            or at is None
            or day is None
            or not await medications.is_naloxone(kit)
        ):
            continue
        out.append(
            Kit(
                resource=f"SupplyDelivery/{sd['id']}",
                at=at,
                day=day,
                quantity=_quantity(kit.quantity),
                patient=_ref(sd.get("patient")),
                via_family=False,
                facility=facility_of(sd),
                intercept=intercept_of(sd),
                education=_ext(sd, oend.EDUCATION_EXTENSION) is True,
            )
        )
    return out


async def educations(conn: AsyncConnection, ctx: WorkflowContext, span: Span) -> list[Education]:
    out = []
    params = [("code", EDUCATION_QUERY), *span.params("date")]
    for proc in await search_all(conn, ctx, "Procedure", params):
        when = proc.get("performedDateTime") or (proc.get("performedPeriod") or {}).get("start")
        day = day_of(when)
        person = _ref(_ext(proc, oend.FOCUS_R5_EXTENSION)) or _ref(proc.get("subject"))
        if proc.get("status") != "completed" or day is None or not person:
            continue
        if not oend.is_education(proc.get("code")):
            continue
        out.append(
            Education(
                resource=f"Procedure/{proc['id']}",
                day=day,
                person=person,
                facility=facility_of(proc),
                intercept=intercept_of(proc),
            )
        )
    return out


async def responses(conn: AsyncConnection, ctx: WorkflowContext, span: Span) -> list[Response]:
    out = []
    params = [("code", RESPONSE_QUERY), *span.params("date")]
    for obs in await search_all(conn, ctx, "Observation", params):
        when = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start")
        day = day_of(when)
        if obs.get("status") not in RESPONSE_STATUSES or day is None:
            continue
        outcome = next(
            (
                c.get("code")
                for c in (obs.get("valueCodeableConcept") or {}).get("coding", [])
                if c.get("system") == oend.OUTCOME_SYSTEM
            ),
            None,
        )
        out.append(
            Response(
                resource=f"Observation/{obs['id']}",
                day=day,
                outcome=outcome,
                facility=facility_of(obs),
                intercept=intercept_of(obs),
            )
        )
    return out


def release_window(sr: dict[str, Any]) -> tuple[datetime, datetime, datetime] | None:
    """(start, low, high) of a referral's release window."""
    period = sr.get("occurrencePeriod") or {}
    start = instant(period.get("start"))
    if start is None:
        return None
    end_range = parse_range(period["end"]) if isinstance(period.get("end"), str) else None
    if end_range is not None:
        return start, start, max(end_range[1], start)
    return start, shifted(start, -DAY), shifted(start, DAY)  # (clamped at 0001 and 9999)


async def releases(
    conn: AsyncConnection, ctx: WorkflowContext, span: Span, *, patient: str | None = None
) -> list[Release]:
    """Release events from referrals, one per person and overlapping windows.

    A release is found when one of its referrals' windows reaches ``span``; one that starts
    before ``span.low`` is found whole, as it is not counted in the span (its start is not).
    """
    params = [("category", REFERRAL_CATEGORY)]
    if patient:
        params.append(("patient", patient))
    found = await _referrals_reaching(conn, ctx, span, params)
    windows: dict[str, list[tuple[datetime, datetime, datetime, dict[str, Any]]]] = {}
    for sr in found:
        subject = _ref(sr.get("subject"))
        window = release_window(sr)
        if sr.get("status") == "entered-in-error" or not subject or window is None:
            continue
        windows.setdefault(subject, []).append((*window, sr))
    out: list[Release] = []
    for person, items in windows.items():
        items.sort(key=lambda w: (w[1], w[0]))
        group: list[tuple[datetime, datetime, datetime, dict[str, Any]]] = []
        for item in items:
            if group and item[1] > max(g[2] for g in group):
                out.append(_release(person, group))
                group = []
            group.append(item)
        if group:
            out.append(_release(person, group))
    return out


async def _referrals_reaching(
    conn: AsyncConnection, ctx: WorkflowContext, span: Span, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The referrals whose window (``release_window``) reaches ``span``, and the earlier
    referrals of the same people, which may join one of them into a release begun before.

    Not ``occurrence=ge<low>``: FHIR reads a Period without an end as open-ended, so that
    matched every referral ever made without an end, where their windows end a day after the
    start. The windows reaching the span start at most a day before it (``sa``), or have an end
    (found with the people's earlier referrals: a person has few referrals, a year has many).
    """
    if span.low is None:
        return await search_all(conn, ctx, "ServiceRequest", [*params, *span.params("occurrence")])
    floor = shifted(span.low, -DAY)
    late = [("occurrence", f"sa{format_instant(shifted(floor, -_ONE_MS))}")]
    if span.high is not None:
        late.append(("occurrence", f"le{format_instant(span.high)}"))
    found = {sr["id"]: sr for sr in await search_all(conn, ctx, "ServiceRequest", params + late)}
    people = sorted({s for sr in found.values() if (s := _ref(sr.get("subject")))})
    for batch in (
        people[i : i + _PEOPLE_PER_SEARCH] for i in range(0, len(people), _PEOPLE_PER_SEARCH)
    ):
        earlier = [("patient", ",".join(batch)), ("occurrence", f"lt{format_instant(floor)}")]
        for sr in await search_all(conn, ctx, "ServiceRequest", params + earlier):
            found.setdefault(sr["id"], sr)
    return list(found.values())


def _release(
    person: str, group: list[tuple[datetime, datetime, datetime, dict[str, Any]]]
) -> Release:
    first = min(group, key=lambda g: g[0])
    sr = first[3]
    day = day_of((sr.get("occurrencePeriod") or {}).get("start"))
    assert day is not None  # the window parsed, so the start has day precision
    return Release(
        patient=person,
        start=first[0],
        day=day,
        low=min(g[1] for g in group),
        high=max(g[2] for g in group),
        referrals=tuple(f"ServiceRequest/{g[3]['id']}" for g in group),
        facility=_ref(_ext(sr, FACILITY_EXTENSION)),
        intercept=intercept_of(sr),
    )


def kit_in_hand(release: Release, candidates: Iterable[Kit]) -> Kit | None:
    """The latest kit handed to the person themself (not a family member) in the window."""
    inside = [
        k
        for k in candidates
        if k.patient == release.patient
        and not k.via_family
        and k.resource.startswith("MedicationDispense/")
        and release.low <= k.at <= release.high
    ]
    return max(inside, key=lambda k: k.at, default=None)
