"""A referral and its custody stay: which stay a new referral belongs to (the person's booking
number, as the referring organization booked it), what its release is, and whether a
referral is still accepted after the recorded release."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, Issue
from service.features.custody.handoff import released_within
from service.features.custody.mapping import expected_release_of, release_of
from service.features.custody.stays import find_stay_in
from service.workflows.context import WorkflowContext
from service.workflows.referrals import ReferralInput

# Intercepts at which the person is in custody and expected out: without a custody stay, the
# referral says when the release is expected.
CUSTODY_INTERCEPTS = frozenset({2, 3, 4})


def _refuse(message: str, field: str) -> BusinessRuleError:
    return BusinessRuleError(message, issues=[Issue("error", "business-rule", message, (field,))])


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
