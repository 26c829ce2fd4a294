"""The dashboard's pure parts: filters, periods, claim mapping, and how cells are shown."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from service.dashboard import views
from service.dashboard.users import (
    DashboardUser,
    SignInRefused,
    organization_reference,
    user_from_claims,
)

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2026, 12, 5), (date(2026, 11, 1), date(2026, 11, 30))),
        (date(2026, 1, 1), (date(2025, 12, 1), date(2025, 12, 31))),
        (date(2024, 3, 31), (date(2024, 2, 1), date(2024, 2, 29))),
    ],
)
def test_last_full_month(today: date, expected: tuple[date, date]) -> None:
    assert views.last_full_month(today) == expected


@pytest.mark.parametrize(
    ("month", "expected"),
    [
        ("2026-02", (date(2026, 2, 1), date(2026, 2, 28))),
        ("2025-12", (date(2025, 12, 1), date(2025, 12, 31))),
    ],
)
def test_month_bounds(month: str, expected: tuple[date, date]) -> None:
    assert views.month_bounds(month) == expected


@pytest.mark.parametrize("month", ["2026-13", "2026-2", "26-02", "2026-02-01", ""])
def test_month_bounds_refuses(month: str) -> None:
    with pytest.raises(views.FilterError, match="YYYY-MM"):
        views.month_bounds(month)


def test_trend_start_spans_twelve_months_across_a_year() -> None:
    f = views.Filters(start=date(2026, 3, 1), end=date(2026, 3, 31))
    assert f.trend_start() == date(2025, 4, 1)
    f = views.Filters(start=date(2025, 12, 1), end=date(2025, 12, 31))
    assert f.trend_start() == date(2025, 1, 1)


def test_filters_to_query() -> None:
    f = views.parse_filters(
        {"from": "2026-01-01", "to": "2026-01-31", "facility": "Location/a", "intercept": "0"},
        today=date(2026, 12, 5),
    )
    assert f.params() == [
        ("from", "2026-01-01"),
        ("to", "2026-01-31"),
        ("facility", "Location/a"),
        ("intercept", "0"),
    ]
    empty = views.parse_filters({"facility": "", "intercept": ""}, today=date(2026, 12, 5))
    assert empty.params() == [("from", "2026-11-01"), ("to", "2026-11-30")]


def test_suppressed_cells_stay_as_they_are() -> None:
    assert views.shown("<11") == "<11"
    assert views.shown(0) == "0"
    assert views.shown(12345) == "12,345"
    assert views.shown(None) == "—"
    assert views.percent(None) == "—"
    assert views.percent(0.375) == "37.5 %"
    steps = views.cascade({"cascade": [{"step": "s", "label": "S", "count": "<11"}]})
    assert steps == [{"step": "s", "label": "S", "shown": "<11", "value": None, "suppressed": True}]


def test_trends_mark_suppressed_months() -> None:
    answer = {
        "measures": [
            {
                "id": "m",
                "title": "M",
                "scoring": "proportion",
                "strata": [
                    {
                        "stratifier": "month",
                        "value": "2026-01",
                        "numerator": 5,
                        "denominator": 20,
                        "rate": 0.25,
                    },
                    {
                        "stratifier": "month",
                        "value": "2026-02",
                        "numerator": "<11",
                        "denominator": 30,
                        "rate": None,
                    },
                ],
            }
        ]
    }
    trend = views.trends(answer)
    assert trend["months"] == ["2026-01", "2026-02"]
    assert trend["series"][0]["values"] == [25.0, None]
    assert trend["series"][0]["cells"] == ["25.0 %", "suppressed"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("123", "Organization/123"),
        ("Organization/demo-otp", "Organization/demo-otp"),
        (["abc"], "Organization/abc"),
        ("Patient/1", None),
        ("a/b/c", None),
        (["a", "b"], None),
        (7, None),
        ("", None),
    ],
)
def test_organization_reference(value: object, expected: str | None) -> None:
    assert organization_reference(value) == expected


def claims_user(claims: dict[str, object]) -> DashboardUser:
    return user_from_claims(
        claims,
        organization_claim="handoff_organization",
        role_claim="handoff_role",
        hours=8,
        now=NOW,
    )


def test_program_manager_from_claims() -> None:
    user = claims_user(
        {
            "sub": "a",
            "email": "a@example.org",
            "handoff_role": "program-manager",
            "handoff_organization": "42",
        }
    )
    assert (user.role, user.organization, user.name) == (
        "program-manager",
        "Organization/42",
        "a@example.org",
    )
    assert user.expires == int((NOW + timedelta(hours=8)).timestamp())


def test_admin_role_from_a_list_ignores_the_organization() -> None:
    user = claims_user(
        {"sub": "a", "handoff_role": ["viewer", "admin"], "handoff_organization": "42"}
    )
    assert user.is_admin and user.organization is None


@pytest.mark.parametrize(
    "claims",
    [
        {"handoff_role": "admin"},
        {"sub": "a"},
        {"sub": "a", "handoff_role": "owner"},
        {"sub": "a", "handoff_role": "program-manager", "handoff_organization": "Patient/1"},
    ],
)
def test_claims_without_a_usable_role_or_organization_are_refused(
    claims: dict[str, object],
) -> None:
    with pytest.raises(SignInRefused):
        claims_user(claims)


def test_session_user_expires_and_tampered_shapes_are_ignored() -> None:
    user = claims_user({"sub": "a", "handoff_role": "admin"})
    data = user.to_session()
    assert DashboardUser.from_session(data, now=NOW) == user
    assert DashboardUser.from_session(data, now=NOW + timedelta(hours=9)) is None
    assert DashboardUser.from_session({**data, "role": "root"}, now=NOW) is None
    assert DashboardUser.from_session({**data, "extra": 1}, now=NOW) is None
    assert DashboardUser.from_session("x", now=NOW) is None
