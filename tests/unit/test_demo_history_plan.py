"""The demo history's plan (service/demo_history.py): deterministic, moving with now, and a
year of it looks like a program's year."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service.demo_history import Story, plan_history


def _shape(stories: list[Story], now: datetime) -> list[Any]:
    """A plan as offsets from ``now``: the same for any ``now``."""

    def ago(when: datetime | None) -> float | None:
        return None if when is None else round((now - when).total_seconds())

    return [
        (
            s.booking_number,
            s.person_id,
            s.facility_key,
            ago(s.booked_at),
            ago(s.released_at),
            s.planned,
            s.release_type,
            ago(s.screened_at),
            s.naloxone,
            [
                (
                    r.service,
                    r.response,
                    ago(r.responded_at),
                    r.appointment and (ago(r.appointment[0]), r.appointment[1]),
                    [(ago(at), medium, reached) for at, medium, reached in r.contacts],
                )
                for r in s.referrals
            ],
            s.overdose and (ago(s.overdose[0]), s.overdose[1]),
            ago(s.transferred_at),
        )
        for s in stories
    ]


def test_the_plan_is_the_same_every_time_and_moves_with_now() -> None:
    # Away from midnight: the walkthrough's "due today" follow-up is an hour from now, or
    # halfway to midnight when that is nearer.
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    later = now + timedelta(days=40, hours=7, minutes=13)
    assert _shape(plan_history(now, 12), now) == _shape(plan_history(now, 12), now)
    assert _shape(plan_history(later, 12), later) == _shape(plan_history(now, 12), now)
    assert plan_history(now, 0) == []


def test_the_counts_do_not_depend_on_the_time_of_day() -> None:
    noon = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    for now in (noon.replace(hour=23, minute=59, second=30), noon.replace(hour=0, minute=0)):
        ours, theirs = plan_history(now, 12), plan_history(noon, 12)
        assert [_counts(s) for s in ours] == [_counts(s) for s in theirs]


def _counts(story: Story) -> tuple[Any, ...]:
    return (
        story.released_at is None,
        story.screened_at is None,
        story.naloxone,
        [
            (r.response, r.appointment and r.appointment[1], len(r.contacts))
            for r in story.referrals
        ],
    )


def test_a_year_of_history_looks_like_a_program() -> None:
    now = datetime.now(UTC)
    stories = plan_history(now, 12)
    released = [s for s in stories if s.released_at is not None]
    assert 150 <= len(released) <= 250
    assert all(s.booked_at < (s.released_at or now) <= now for s in stories)
    assert min(s.released_at for s in released if s.released_at) > now - timedelta(days=366)
    assert {s.facility_key for s in stories} == {"county-jail-site", "county-jail-annex-site"}
    assert {s.planned for s in released} == {True, False}
    moved = [s for s in released if s.transferred_at]
    assert moved and all(s.booked_at < s.transferred_at < s.released_at for s in moved)  # type: ignore[operator]
    stays = [(s.released_at - s.booked_at) for s in released if s.released_at]
    assert any(d < timedelta(hours=72) for d in stays) and any(
        d > timedelta(hours=72) for d in stays
    )
    screened = [s for s in released if s.screened_at is not None]
    assert len(screened) > 0.75 * len(released)
    assert all(
        s.booked_at <= s.screened_at <= (s.released_at or now) for s in screened if s.screened_at
    )
    assert sum(s.naloxone for s in released) > 0.5 * len(released)
    referrals = [r for s in stories for r in s.referrals]
    assert {r.response for r in referrals} == {
        "accepted",
        "accepted-late",
        "rejected",
        "unanswered",
    }
    assert {r.service for r in referrals} >= {"peer-support", "harm-reduction", "sud-treatment"}
    outcomes = {r.appointment[1] for r in referrals if r.appointment}
    assert outcomes == {"attended", "no-show", "booked"}
    first_reached = [
        next(at for at, _, reached in r.contacts if reached) - s.released_at
        for s in released
        for r in s.referrals
        if s.released_at and any(c[2] for c in r.contacts)
    ]
    assert any(d <= timedelta(hours=24) for d in first_reached)
    assert any(timedelta(hours=24) < d <= timedelta(hours=72) for d in first_reached)
    assert any(d > timedelta(hours=72) for d in first_reached)
    assert any(not reached for r in referrals for _, _, reached in r.contacts)
    assert all(at < now for r in referrals for at, _, _ in r.contacts)
    people = [s.person_id for s in stories]
    assert len(people) - len(set(people)) >= 2  # booked again
    assert 1 <= sum(s.overdose is not None for s in stories) <= 6
