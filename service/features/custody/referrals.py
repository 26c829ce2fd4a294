"""A referral and its custody stay: which stay a new referral belongs to (the person's booking
number, as the referring organization booked it), what its release is, whether a referral is
still accepted after the recorded release, and the person's recent screenings it carries."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, Issue
from service.features.custody.handoff import released_within
from service.features.custody.mapping import expected_release_of, release_of
from service.features.custody.stays import find_stay_in
from service.features.people import identifier_domain, match_or_create_patient
from service.features.referrals import ReferralInput
from service.fhir.dates import format_instant
from service.search.execute import run_search
from service.search.query import parse_search
from service.storage import repository as repo
from service.workflows.access import CREATOR_PARAM
from service.workflows.context import WorkflowContext

# Screenings and overdose-risk assessments this recent (or made during the custody stay) go
# with a referral as supportingInfo.
SCREENING_LOOKBACK = timedelta(days=90)

# Intercepts at which the person is in custody and expected out: without a custody stay, the
# referral says when the release is expected.
CUSTODY_INTERCEPTS = frozenset({2, 3, 4})


def _refuse(message: str, field: str) -> BusinessRuleError:
    return BusinessRuleError(message, issues=[Issue("error", "business-rule", message, (field,))])


async def prepare_referral(
    conn: AsyncConnection, ctx: WorkflowContext, data: ReferralInput
) -> ReferralInput:
    """The referral with its custody stay (``resolve_referral_stay``), its Patient, and the
    person's recent screenings (``recent_screenings``)."""
    resolved = await resolve_referral_stay(conn, ctx, data)
    if resolved.patient_id is None:
        patient_id, _ = await match_or_create_patient(conn, ctx, resolved.person)
        resolved = dataclasses.replace(resolved, patient_id=patient_id)
    assert resolved.patient_id is not None
    # From the start of the day: one statement per day, whatever the second it runs.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - SCREENING_LOOKBACK
    carried = await recent_screenings(conn, ctx, resolved.patient_id, since=since)
    return dataclasses.replace(resolved, carried_info=carried)


async def recent_screenings(
    conn: AsyncConnection, ctx: WorkflowContext, patient_id: str, *, since: datetime
) -> list[str]:
    """The person's completed QuestionnaireResponses (screenings, overdose-risk checklists)
    authored since ``since`` by the referring organization or an organization of its
    person-identifier domain (a jail's health unit), oldest first. The receiver reads each
    only as 42 CFR Part 2 lets it (the author's consent naming it), like every record."""
    organization = ctx.organization
    if organization is None:
        return []
    request = parse_search(
        "QuestionnaireResponse",
        [
            ("patient", f"Patient/{patient_id}"),
            ("status", "completed,amended"),
            ("authored", f"ge{format_instant(since)}"),
            ("_sort", "authored"),
        ],
        strict=True,
        default_count=50,
        max_count=50,
    )
    page = await run_search(conn, request, base_url=ctx.base_url)
    creators = await repo.index_values(
        conn,
        "QuestionnaireResponse",
        [(m.id, m.version_id) for m in page.matches],
        CREATOR_PARAM,
    )
    domain = await identifier_domain(conn, organization)
    domains: dict[str, str | None] = {organization: domain}
    out = []
    for match in page.matches:
        creator = creators.get((match.id, match.version_id))
        if creator is None:
            continue
        if creator not in domains:
            domains[creator] = await identifier_domain(conn, creator)
        if creator == organization or (domain is not None and domains[creator] == domain):
            out.append(f"QuestionnaireResponse/{match.id}")
    return out


async def resolve_referral_stay(
    conn: AsyncConnection, ctx: WorkflowContext, data: ReferralInput
) -> ReferralInput:
    """``data`` with its custody stay's person and release, when the person's booking number
    is a custody stay of the referring organization; refused when that stay was cancelled, or
    released longer ago than ``HANDOFF_POST_RELEASE_REFERRAL_DAYS``; and refused without a
    stay or an expected release at the intercepts where the person is in custody."""
    booking = data.person.booking_number
    stay = await find_stay_in(conn, ctx, booking) if booking else None
    if stay is None or stay.get("status") == "entered-in-error":
        if stay is not None:
            raise _refuse(
                f"The booking {booking} was cancelled (entered in error): refer with the "
                "person's current booking",
                "person.booking_number",
            )
        if data.release_at is None and data.intercept in CUSTODY_INTERCEPTS:
            raise _refuse(
                f"A referral at intercept {data.intercept} (the person is in custody) needs "
                "release.expected_at, or the booking number of a custody stay recorded with "
                "POST /v1/bookings (person.booking_number)",
                "release",
            )
        return data
    patient_id = str((stay.get("subject") or {}).get("reference", "")).removeprefix("Patient/")
    resolved = dataclasses.replace(data, encounter=f"Encounter/{stay['id']}", patient_id=patient_id)
    released = release_of(stay)
    if released is not None:
        days = ctx.settings.post_release_referral_days
        if not released_within(released.released_at, days):
            raise _refuse(
                f"The person was released on {released.released_at.isoformat()} (booking "
                f"{booking}), more than {days} days ago: a referral after release is accepted "
                f"within {days} days of it (HANDOFF_POST_RELEASE_REFERRAL_DAYS)",
                "person.booking_number",
            )
        return dataclasses.replace(
            resolved,
            release_at=released.released_at,
            release_window_end=None,
            released=(
                str((stay.get("period") or {})["end"]),
                "planned" if released.planned else "unplanned",
            ),
        )
    expected = expected_release_of(stay)
    if expected is not None:
        return dataclasses.replace(resolved, release_at=datetime.fromisoformat(expected))
    return resolved
