"""A year of demo history for ``handoff serve --demo``: what a county jail's warm-handoff program
looks like after twelve months (``HANDOFF_DEMO_HISTORY_MONTHS``, ending now).

About 170 releases a year from the demo jail's two facilities (planned and unplanned, stays under
and over 72 hours, some long stays moved to the other facility), most people screened at booking
with the overdose-risk checklist, referrals to treatment and MOUD, harm reduction and peer support
(accepted before or after the release, rejected, never answered), naloxone at release for most,
first appointments attended and missed, peer contacts that reached the person within 24 hours, 72
hours or later (and some that did not), a few overdose responses, a few people booked again. The
last weeks give the demo peer organization follow-ups overdue, due today and upcoming, and the demo
treatment program a booked upcoming first appointment (README: Follow-up after release).

Every record is written through the use cases the ``/v1`` routes call, as the organization that
would write it, so every write rule runs. Clinical times are the historical ones (booking, transfer,
screening, release, kit handed over, appointment start, contact, overdose, and the time of a
referral's accepted/declined/closing milestone, ``milestone-occurred-at``); record times
(``meta.lastUpdated``) are when the seeding ran. Where a use case takes no clinical time, the
record time is all there is: when a referral was sent (``authoredOn``), an appointment booked
(``intake-scheduled``) or missed (``no-show``), an unplanned release escalated, and when a
program closed the windows of a month-old release that no contact completed.

The plan is drawn from a seeded ``random.Random`` with every time relative to now: the same stories,
the same counts, on every database and every day. Each story is keyed by its booking number
(``DEMO-H-0001`` ...): a story whose booking exists is skipped, so seeding twice writes nothing
twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from service.auth.principal import Principal
from service.auth.scopes import ScopeSet
from service.features import appointments, contacts
from service.features.assessments.record import AssessmentInput, record_assessment
from service.features.custody import stays
from service.features.custody.referrals import prepare_referral
from service.features.followups import follow_ups_of
from service.features.naloxone.records import (
    NaloxoneInput,
    OverdoseResponseInput,
    Staff,
    record_naloxone,
    record_overdose_response,
)
from service.features.people import Person
from service.features.referrals import ReferralInput, open_referral
from service.fhir import codes
from service.fhir.dates import format_instant
from service.storage import repository as repo
from service.storage.db import write_transaction
from service.workflows import resources as wf
from service.workflows.access import access_filter, tenancy_filter
from service.workflows.context import WorkflowContext

logger = logging.getLogger("handoff.demo")

SEED = 26
RELEASES_PER_YEAR = 160
WIDTH = 4  # stories written at once on PostgreSQL
BOOKING_PREFIX = "DEMO-H-"
ANNEX_KEY = "county-jail-annex-site"
MILESTONE_AT = f"{codes.HANDOFF}/StructureDefinition/milestone-occurred-at"

# Referral kinds: (service code, receiving demo organization).
TREATMENT = [
    ("moud-methadone", "otp"),
    ("moud-buprenorphine", "otp"),
    ("sud-treatment", "sud-treatment"),
]
HARM_REDUCTION = ("harm-reduction", "harm-reduction")
PEER = ("peer-support", "peer-support")

FAMILY = [
    "Adams", "Baker", "Brooks", "Carter", "Collins", "Cruz", "Diaz", "Evans", "Foster", "Garcia",
    "Gray", "Hayes", "Hughes", "Jenkins", "Kelly", "Lopez", "Martin", "Mendez", "Morgan", "Nguyen",
    "Ortiz", "Parker", "Perry", "Price", "Reed", "Reyes", "Rivera", "Ross", "Sanders", "Shaw",
    "Stewart", "Sullivan", "Torres", "Turner", "Walker", "Ward", "Watson", "Wood", "Young",
]  # fmt: skip
GIVEN = {
    "male": ["Aaron", "Ben", "Carlos", "Derek", "Eli", "Frank", "Gabe", "Hector", "Isaac",
             "Jamal", "Kevin", "Luis", "Marcus", "Nate", "Omar", "Pete", "Ray", "Sean", "Tony",
             "Victor", "Wes"],
    "female": ["Alicia", "Brenda", "Carmen", "Dana", "Erin", "Faith", "Gina", "Holly", "Iris",
               "Jess", "Kara", "Lena", "Maria", "Nina", "Paula", "Rosa", "Tara", "Vera"],
}  # fmt: skip
RELEASE_TYPES_PLANNED = ["end-of-sentence", "time-served", "probation", "pretrial-supervision"]
RELEASE_TYPES_UNPLANNED = ["court-order", "bail", "own-recognizance", "charges-dropped"]
PLACES = ["Riverside park", "Canal St underpass", "Motel on Route 9", "A friend's apartment"]


@dataclass
class ReferralPlan:
    service: str
    org_key: str
    response: str  # accepted | accepted-late (after the release) | rejected | unanswered
    responded_at: datetime | None
    appointment: tuple[datetime, str] | None = None  # (start, attended|no-show|booked)
    contacts: list[tuple[datetime, str, bool]] = field(default_factory=list)  # at, medium, reached


@dataclass
class Story:
    number: int
    person_id: str
    family: str
    given: str
    sex: str
    birth_date: str
    facility_key: str  # county-jail-site | county-jail-annex-site
    booked_at: datetime
    released_at: datetime | None  # None: still in custody
    expected_release_at: datetime | None
    planned: bool
    release_type: str
    screened_at: datetime | None
    high_risk: bool
    referrals: list[ReferralPlan]
    naloxone: bool
    education: bool
    overdose: tuple[datetime, str] | None = None  # (when, outcome), reported by harm reduction
    transferred_at: datetime | None = None  # moved to the other facility during the stay

    @property
    def booking_number(self) -> str:
        return f"{BOOKING_PREFIX}{self.number:04d}"


@dataclass
class HistoryCounts:
    """What one seeding wrote (zeros when everything was already there)."""

    stories: int = 0
    transfers: int = 0
    releases: int = 0
    screenings: int = 0
    referrals: int = 0
    accepted: int = 0
    rejected: int = 0
    appointments: int = 0
    attended: int = 0
    missed: int = 0
    contacts: int = 0
    naloxone_kits: int = 0
    overdose_responses: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


# --- the plan (pure: the same stories for the same ``now``, shifted with it) --------------------


def _hours(value: float) -> timedelta:
    return timedelta(hours=value)


def _contacts(rng: random.Random, released: datetime) -> list[tuple[datetime, str, bool]]:
    """A peer program's attempts after a release: first reached within 24 h, 72 h, later, or
    never; then the check-ins of the plan (about a week, two weeks, a month)."""
    out: list[tuple[datetime, str, bool]] = []
    roll = rng.random()
    if roll < 0.15:
        out.append((released + _hours(rng.uniform(2, 20)), "phone", False))
        out.append((released + _hours(rng.uniform(30, 70)), "phone", False))
        return out
    if roll < 0.60:
        first = rng.uniform(0.5, 22)
    elif roll < 0.85:
        first = rng.uniform(25, 70)
    else:
        first = rng.uniform(80, 200)
    if first > 6 and rng.random() < 0.5:
        out.append((released + _hours(first * rng.uniform(0.2, 0.8)), "phone", False))
    out.append(
        (released + _hours(first), rng.choice(["in-person", "phone", "phone", "text"]), True)
    )
    for day in (6, 13, 28):
        if released + _hours(first) < released + timedelta(days=day) and rng.random() < 0.65:
            at = released + timedelta(days=day, hours=rng.uniform(-18, 18))
            out.append((at, rng.choice(["phone", "in-person", "video", "text"]), True))
    return out


def _referrals(
    rng: random.Random, booked: datetime, released: datetime | None, high_risk: bool
) -> list[ReferralPlan]:
    kinds: list[tuple[str, str]] = []
    if high_risk or rng.random() < 0.4:
        kinds.append(rng.choice(TREATMENT))
    if rng.random() < (0.75 if high_risk else 0.35):
        kinds.append(PEER)
    if rng.random() < 0.35:
        kinds.append(HARM_REDUCTION)
    end = released or booked + timedelta(days=3)
    plans = []
    for service, org_key in kinds:
        roll = rng.random()
        # Referred within the first hours of the stay; answered a little later.
        answered = booked + (end - booked) * rng.uniform(0.3, 0.9)
        if roll < 0.62:
            plan = ReferralPlan(service, org_key, "accepted", answered)
        elif roll < 0.72 and released is not None:
            plan = ReferralPlan(
                service, org_key, "accepted-late", released + _hours(rng.uniform(2, 30))
            )
        elif roll < 0.85:
            plan = ReferralPlan(service, org_key, "rejected", answered)
        else:
            plan = ReferralPlan(service, org_key, "unanswered", None)
        if released is not None and plan.response == "accepted":
            if org_key in ("otp", "sud-treatment"):
                # Relative to the release (not a clock hour): whether it is still ahead of now
                # is the same whatever the time of day.
                days = rng.choice([1, 2, 3, 5, 7, 9, 12, 16, 20])
                start = released + timedelta(days=days, hours=rng.uniform(-6, 6))
                plan.appointment = (start, "attended" if rng.random() < 0.68 else "no-show")
            elif org_key == "peer-support":
                plan.contacts = _contacts(rng, released)
        plans.append(plan)
    return plans


def _story(
    rng: random.Random,
    number: int,
    released: datetime | None,
    now: datetime,
    *,
    in_custody_since: datetime | None = None,
    stay: timedelta | None = None,
) -> Story:
    sex = rng.choice(["male", "male", "male", "female"])
    family, given = rng.choice(FAMILY), rng.choice(GIVEN[sex])
    birth = date(1965, 1, 1) + timedelta(days=rng.randrange(0, 365 * 38))
    short = rng.random() < 0.55
    if released is not None:
        length = _hours(rng.uniform(6, 70)) if short else timedelta(days=rng.uniform(3.2, 60))
        booked = released - (stay or length)
    else:
        assert in_custody_since is not None
        booked = in_custody_since
    planned = released is None or rng.random() < 0.68
    if released is not None and planned:
        expected: datetime | None = released + _hours(rng.uniform(-0.5, 0.5))
    elif released is not None:
        expected = released + timedelta(days=rng.uniform(2, 30)) if rng.random() < 0.6 else None
    else:
        # Beyond the jail worklist's next four days (README's example lists only its own).
        expected = now + timedelta(days=rng.uniform(5, 20))
    screened = rng.random() < 0.85
    high_risk = screened and rng.random() < 0.8
    screened_at = booked + _hours(rng.uniform(1, 20)) if screened else None
    if screened_at is not None and released is not None and screened_at >= released:
        screened_at = booked + (released - booked) / 2
    referrals = _referrals(rng, booked, released, high_risk) if screened else []
    transferred = None
    if released is not None and released - booked > timedelta(days=10) and rng.random() < 0.3:
        transferred = booked + (released - booked) * rng.uniform(0.2, 0.6)
    return Story(
        number=number,
        person_id=f"DEMO-P-{number:04d}",
        family=family,
        given=given,
        sex=sex,
        birth_date=birth.isoformat(),
        facility_key="county-jail-site" if rng.random() < 0.7 else ANNEX_KEY,
        booked_at=booked,
        released_at=released,
        expected_release_at=expected,
        planned=planned,
        release_type=rng.choice(RELEASE_TYPES_PLANNED if planned else RELEASE_TYPES_UNPLANNED),
        screened_at=screened_at,
        high_risk=high_risk,
        referrals=referrals,
        naloxone=high_risk and released is not None and rng.random() < 0.85,
        education=rng.random() < 0.9,
        transferred_at=transferred,
    )


def plan_history(now: datetime, months: int) -> list[Story]:
    """The demo's stories for ``months`` months ending at ``now``, oldest release first; the
    last few are the walkthrough's (README: Follow-up after release)."""
    if months <= 0:
        return []
    rng = random.Random(SEED)
    span = timedelta(days=30.4 * months)
    count = round(RELEASES_PER_YEAR * months / 12)
    # Releases spread over the period, none in the last two days (the walkthrough's).
    offsets = sorted((rng.uniform(2.0, span.days) for _ in range(count)), reverse=True)
    stories = [_story(rng, i + 1, now - timedelta(days=d), now) for i, d in enumerate(offsets)]
    # A few people booked again after their release (the same JMS person id).
    for story in rng.sample(stories[: max(1, len(stories) * 2 // 3)], k=min(3, len(stories))):
        assert story.released_at is not None
        rebook = story.released_at + timedelta(days=rng.uniform(20, 60))
        stay = timedelta(days=rng.uniform(1, 10))
        if rebook + stay > now - timedelta(days=3):
            continue
        again = _story(rng, len(stories) + 1, rebook + stay, now, stay=stay)
        again.person_id, again.family, again.given = story.person_id, story.family, story.given
        again.sex, again.birth_date = story.sex, story.birth_date
        stories.append(again)
    # The walkthrough: released 23 hours ago (the 24-hour follow-up due today), 4 days ago and
    # never reached (overdue), and 2 days ago with a treatment appointment booked for later.
    base = len(stories)
    # Due today: an hour from now, or halfway to midnight (UTC) when that is nearer.
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    due = now + min(_hours(1), (midnight - now) / 2)
    recent = _story(rng, base + 1, due - _hours(24), now)
    recent.referrals = [ReferralPlan("peer-support", "peer-support", "accepted", now - _hours(30))]
    recent.screened_at, recent.high_risk, recent.naloxone = now - _hours(40), True, True
    recent.booked_at = min(recent.booked_at, now - _hours(48))
    silent = _story(rng, base + 2, now - timedelta(days=4), now)
    silent.referrals = [
        ReferralPlan("peer-support", "peer-support", "accepted", now - timedelta(days=5))
    ]
    silent.referrals[0].contacts = [(now - timedelta(days=3, hours=20), "phone", False)]
    silent.booked_at = min(silent.booked_at, now - timedelta(days=6))
    silent.screened_at, silent.high_risk = silent.booked_at + _hours(2), True
    booked = _story(rng, base + 3, now - timedelta(days=2), now)
    booked.booked_at = min(booked.booked_at, now - timedelta(days=5))
    booked.screened_at, booked.high_risk = booked.booked_at + _hours(3), True
    treatment = ReferralPlan("sud-treatment", "sud-treatment", "accepted", now - timedelta(days=3))
    treatment.appointment = (now + timedelta(days=3, hours=2), "booked")
    booked.referrals = [
        treatment,
        ReferralPlan("peer-support", "peer-support", "accepted", now - timedelta(days=3)),
    ]
    booked.referrals[1].contacts = [(now - timedelta(days=1, hours=22), "in-person", True)]
    stories += [recent, silent, booked]
    # A few still in custody, referred, release expected in the coming days.
    for i in range(3):
        since = now - timedelta(days=3 + 4 * i)
        stories.append(_story(rng, len(stories) + 1, None, now, in_custody_since=since))
    # A few overdoses reported by the harm reduction program, among people it was referred.
    reported = [
        s
        for s in stories
        if s.released_at is not None
        and s.released_at < now - timedelta(days=20)
        and any(r.org_key == "harm-reduction" and r.response == "accepted" for r in s.referrals)
    ]
    for s in rng.sample(reported, k=min(5, len(reported))):
        assert s.released_at is not None
        when = s.released_at + timedelta(days=rng.uniform(2, 18), hours=rng.uniform(0, 23))
        s.overdose = (when, rng.choice(["survived", "survived", "survived", "transported"]))
    # Nothing happens after now (a rounding of an appointment hour or a late check-in).
    for s in stories:
        for r in s.referrals:
            r.contacts = [c for c in r.contacts if c[0] < now - timedelta(minutes=5)]
            if r.appointment and r.appointment[1] != "booked" and r.appointment[0] > now:
                r.appointment = (r.appointment[0], "booked")
            if r.responded_at is not None and r.responded_at > now:
                r.responded_at = now - timedelta(minutes=10)
    return stories


# --- writing it ----------------------------------------------------------------------------------


def _context(
    app: FastAPI, client_id: str, organization: str | None, scopes: str
) -> WorkflowContext:
    settings = app.state.settings
    base = (settings.public_base_url or "http://127.0.0.1:8000").rstrip("/") + "/fhir"
    principal = Principal(
        client_id=client_id,
        organization=organization,
        scopes=ScopeSet.parse(scopes),
        is_admin=False,
        token_id=None,
        issuer="demo-seed",
    )
    return WorkflowContext(
        engine=app.state.engine,
        settings=settings,
        base_url=base,
        request_id="demo-history",
        principal=principal,
        access=access_filter(principal, "r", base_url=base),
        search_access=access_filter(principal, "s", base_url=base),
        write_access=tenancy_filter(principal),
        rules=app.state.rules,
        audit=False,
    )


def _fresh(ctx: WorkflowContext) -> WorkflowContext:
    """The organization's context for one use case (what a request collects starts empty)."""
    return dataclasses.replace(
        ctx,
        accessed=[],
        written=[],
        outcomes={},
        disclosure_bases={},
        audit_notes=type(ctx.audit_notes)(),
    )


def _answers(story: Story) -> dict[str, Any]:
    assert story.screened_at is not None
    release = story.expected_release_at or story.released_at or story.booked_at
    answers: dict[str, Any] = {
        "days-in-custody": max(0, ((release - story.booked_at).days)),
        "opioid-use-pre-custody": story.high_risk,
        "opioid-abstinent-in-custody": story.high_risk,
        "planned-release-date": release.date().isoformat(),
        "overdose-ever": story.high_risk and story.number % 3 == 0,
        "fentanyl-use": "LA33-6" if story.high_risk else "LA32-8",
        "co-use": ["stimulants", "alcohol"] if story.number % 2 else ["none-of-these"],
        "injection-past-12m": story.high_risk and story.number % 2 == 0,
        "naloxone-in-hand": False,
        "moud-at-release": "no-moud",
        "housing-at-release": ["housing-stable", "housing-temporary", "housing-shelter"][
            story.number % 3
        ],
    }
    if not story.high_risk:
        del answers["opioid-abstinent-in-custody"]
    return answers


async def _respond(
    conn: AsyncConnection, ctx: WorkflowContext, task_id: str, plan: ReferralPlan
) -> None:
    """The receiving program accepts or declines, as a FHIR Task update would, with the
    milestone's clinical time."""
    assert plan.responded_at is not None
    row = await repo.get_current(conn, "Task", task_id, for_update=True)
    assert row is not None and row.raw is not None
    task = orjson.loads(row.raw)
    occurred = {"url": MILESTONE_AT, "valueDateTime": format_instant(plan.responded_at)}
    if plan.response == "rejected":
        task["status"] = "rejected"
        task["statusReason"] = {
            "coding": [{"system": codes.STATUS_REASON_SYSTEM, "code": "at-capacity"}],
            "text": "At capacity this month; please refer to another program",
        }
        task["businessStatus"] = {
            **codes.business_status("declined-by-recipient"),
            "extension": [occurred],
        }
    else:
        task["status"] = "accepted"
        task["businessStatus"] = {**codes.business_status("accepted"), "extension": [occurred]}
    await wf.update_in(conn, _fresh(ctx), "Task", task_id, task, if_match=row.version_id)


async def _close_peer(
    conn: AsyncConnection, ctx: WorkflowContext, task_id: str, reached: int, at: datetime
) -> None:
    """A month after the release the peer program closes the referral: engaged, or lost."""
    row = await repo.get_current(conn, "Task", task_id, for_update=True)
    assert row is not None and row.raw is not None
    task = orjson.loads(row.raw)
    if task.get("status") not in ("accepted", "in-progress"):
        return
    occurred = {"url": MILESTONE_AT, "valueDateTime": format_instant(at)}
    if reached >= 2:
        task["status"] = "completed"
        task["businessStatus"] = {
            **codes.business_status("closed-engaged"),
            "extension": [occurred],
        }
        task["output"] = [
            *task.get("output", []),
            {
                "type": {"coding": [{"system": codes.OUTPUT_SYSTEM, "code": "peer-session"}]},
                "valueString": "Peer recovery sessions after release",
            },
        ]
    else:
        task["status"] = "failed"
        task["statusReason"] = {
            "coding": [{"system": codes.STATUS_REASON_SYSTEM, "code": "unable-to-contact"}],
            "text": "Not reached in the month after release",
        }
        task["businessStatus"] = {
            **codes.business_status("lost-to-follow-up"),
            "extension": [occurred],
        }
    await wf.update_in(conn, _fresh(ctx), "Task", task_id, task, if_match=row.version_id)


async def _end_follow_ups(conn: AsyncConnection, ctx: WorkflowContext, sr_id: str) -> None:
    """Windows of a release over a month old that no contact completed: the program closes
    them (failed, not reached), so its worklist holds the current month."""
    for task in await follow_ups_of(conn, sr_id):
        if task.get("status") not in ("ready", "in-progress"):
            continue
        task["status"] = "failed"
        task["statusReason"] = {"text": "Window passed without a contact"}
        await wf.update_in(
            conn, _fresh(ctx), "Task", task["id"], task, if_match=int(task["meta"]["versionId"])
        )


async def _write_story(
    story: Story,
    contexts: dict[str, WorkflowContext],
    org_ids: dict[str, str],
    locations: dict[str, str],
    now: datetime,
    counts: HistoryCounts,
) -> None:
    jail = contexts["county-jail"]
    facility = f"Location/{locations[story.facility_key]}"
    other = "county-jail-site" if story.facility_key == ANNEX_KEY else ANNEX_KEY
    released_from = f"Location/{locations[other]}" if story.transferred_at else facility
    person = Person(
        person_id=story.person_id,
        booking_number=story.booking_number,
        family_name=story.family,
        given_names=[story.given],
        birth_date=story.birth_date,
        sex=story.sex,
    )
    async with write_transaction(jail.engine) as conn:
        if await stays.find_stay_in(conn, jail, story.booking_number) is not None:
            return  # seeded before
        _, stay = await stays.book_in(
            conn,
            _fresh(jail),
            stays.BookingInput(
                booking_number=story.booking_number,
                person=person,
                facility=facility,
                booked_at=story.booked_at,
                expected_release_at=story.expected_release_at,
            ),
        )
        if story.transferred_at is not None:
            await stays.transfer_in(
                conn,
                _fresh(jail),
                story.booking_number,
                to=released_from,
                at=story.transferred_at,
            )
            counts.transfers += 1
    counts.stories += 1
    patient_id = str(stay["subject"]["reference"]).removeprefix("Patient/")
    known = dataclasses.replace(person, patient_id=patient_id)
    if story.screened_at is not None:
        await record_assessment(
            _fresh(jail),
            AssessmentInput(
                person=known,
                instrument="overdose-risk",
                answers=_answers(story),
                administered_by_name="Jordan Lee",
                administered_by_role="peer-specialist",
                administered_by_id="S-77",
                administered_at=story.screened_at.isoformat(),
                intercept=3,
                location=facility,
                status="completed",
            ),
            idempotency_key=None,
            fingerprint="",
        )
        counts.screenings += 1
    opened: list[tuple[ReferralPlan, str, str]] = []  # (plan, ServiceRequest id, Task id)
    for k, plan in enumerate(story.referrals):
        _, view = await open_referral(
            _fresh(jail),
            ReferralInput(
                jms_referral_id=f"{story.booking_number}-{k + 1}",
                person=person,
                referred_by_name="Jordan Lee",
                referred_by_role="reentry-coordinator",
                referred_by_id="S-77",
                facility=facility,
                intercept=3,
                program_type="jail-reentry",
                release_at=None,
                release_window_end=None,
                release_location=None,
                services=[plan.service],
                receiver=f"Organization/{org_ids[plan.org_key]}",
                priority="urgent" if story.high_risk else "routine",
                notes=None,
                contact_directly=True,
            ),
            idempotency_key=None,
            fingerprint="",
            resolve_stay=prepare_referral,
        )
        opened.append((plan, str(view["referral_id"]), str(view["task_id"])))
        counts.referrals += 1
    answered = [(p, t) for p, _, t in opened if p.response in ("accepted", "rejected")]
    if answered:
        async with write_transaction(jail.engine) as conn:
            for plan, task_id in answered:
                await _respond(conn, contexts[plan.org_key], task_id, plan)
                counts.accepted += plan.response == "accepted"
                counts.rejected += plan.response == "rejected"
    if story.released_at is None:
        return
    async with write_transaction(jail.engine) as conn:
        await stays.release_in(
            conn,
            _fresh(jail),
            story.booking_number,
            stays.ReleaseInput(
                released_at=story.released_at,
                planned=story.planned,
                release_type=story.release_type,
            ),
        )
    counts.releases += 1
    if story.naloxone:
        await record_naloxone(
            _fresh(jail),
            NaloxoneInput(
                person=known,
                setting="at-release",
                facility=released_from,
                place=None,
                given_by=Staff(name="Sam Ortiz", role="nurse", staff_id="S-12"),
                given_at=story.released_at - timedelta(minutes=20),
                product="naloxone-4mg-nasal",
                quantity=2 if story.number % 4 == 0 else 1,
                education_given=story.education,
                family_member=None,
                intercept=4,
            ),
            idempotency_key=None,
            fingerprint="",
        )
        counts.naloxone_kits += 1
    for plan, sr_id, task_id in opened:
        program = contexts[plan.org_key]
        if plan.response == "accepted-late":
            async with write_transaction(jail.engine) as conn:
                await _respond(conn, program, task_id, plan)
            counts.accepted += 1
        if plan.appointment is not None:
            start, outcome = plan.appointment
            _, booked = await appointments.book(
                _fresh(program),
                sr_id,
                appointments.Booking(
                    start=start,
                    end=None,
                    location=f"Location/{locations[plan.org_key + '-site']}",
                    practitioner=None,
                    description="First appointment (intake)",
                ),
                idempotency_key=None,
                fingerprint="",
            )
            counts.appointments += 1
            if outcome != "booked":
                await appointments.mark(
                    _fresh(program),
                    sr_id,
                    str(booked["appointment_id"]),
                    outcome,
                    reason="Did not come" if outcome == "no-show" else None,
                )
                counts.attended += outcome == "attended"
                counts.missed += outcome == "no-show"
        for at, medium, reached in plan.contacts:
            await contacts.record(
                _fresh(program),
                patient_id,
                contacts.Contact(
                    at=at,
                    medium=medium,
                    reached=reached,
                    topics=["naloxone-in-hand", "transport"] if reached else [],
                    next_step="Check in next week" if reached else "Try again tomorrow",
                    notes=None,
                ),
                idempotency_key=None,
                fingerprint="",
            )
            counts.contacts += 1
    # A month on, the programs close what the plan left open (one transaction).
    closing = [o for o in opened if o[0].response == "accepted"]
    if closing and story.released_at < now - timedelta(days=31):
        async with write_transaction(jail.engine) as conn:
            for plan, sr_id, task_id in closing:
                program = contexts[plan.org_key]
                if plan.org_key == "peer-support":
                    times = sum(1 for c in plan.contacts if c[2])
                    end = story.released_at + timedelta(days=30)
                    await _close_peer(conn, program, task_id, times, end)
                await _end_follow_ups(conn, program, sr_id)
    if story.overdose is not None:
        when, outcome = story.overdose
        await record_overdose_response(
            _fresh(contexts["harm-reduction"]),
            OverdoseResponseInput(
                person=known,
                occurred_at=when,
                facility=None,
                place=PLACES[story.number % len(PLACES)],
                doses=2,
                product="naloxone-4mg-nasal",
                outcome=outcome,
                responder_role="peer",
                reporter_role="outreach-worker",
                recorded_by=None,
                intercept=0,
            ),
            idempotency_key=None,
            fingerprint="",
        )
        counts.overdose_responses += 1


async def seed_history(
    app: FastAPI,
    org_ids: dict[str, str],
    locations: dict[str, str],
    clients: dict[str, tuple[str | None, str]],
    *,
    now: datetime | None = None,
) -> HistoryCounts:
    """Seed ``HANDOFF_DEMO_HISTORY_MONTHS`` of history (see the module's docstring) on the demo
    network: ``org_ids`` demo key -> Organization id, ``locations`` site key -> Location id,
    ``clients`` demo client id -> (organization key, scopes), whose contexts write it."""
    started = time.perf_counter()
    counts = HistoryCounts()
    months = app.state.settings.demo_history_months
    if months <= 0:
        return counts
    now = now or datetime.now(UTC)
    by_org = {key: (client, scopes) for client, (key, scopes) in clients.items() if key}
    contexts = {
        key: _context(app, by_org[key][0], f"Organization/{org_id}", by_org[key][1])
        for key, org_id in org_ids.items()
    }
    stories = plan_history(now, months)
    logger.warning(
        "DEMO history: seeding %d months (%d custody stays); this takes a little while",
        months,
        len(stories),
    )
    # PostgreSQL runs a few stories at once (they share no records: a person booked again is
    # booked weeks after the first story's batch); SQLite has one writer at a time.
    width = WIDTH if app.state.engine.dialect.name == "postgresql" else 1
    for i in range(0, len(stories), width):
        await asyncio.gather(
            *(
                _write_story(story, contexts, org_ids, locations, now, counts)
                for story in stories[i : i + width]
            )
        )
    counts.seconds = round(time.perf_counter() - started, 2)
    if counts.stories:
        logger.info("demo history: %s", counts.as_dict())
    return counts
