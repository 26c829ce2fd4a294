"""Every R4 date, dateTime and instant has a UTC range, within what the databases store, that
agrees with Python's own reading of it wherever Python's calendar reaches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.fhir.dates import OPEN_END, OPEN_START, parse_bounds, parse_range, shifted
from tests.r4_values import date_times, instants, r4_dates

BOUNDED = settings(max_examples=400, deadline=None, derandomize=True, database=None)
_US = timedelta(microseconds=1)


def _python_utc(text: str) -> datetime | None:
    """Python's UTC instant for a full dateTime, None where its calendar ends (year 0 or
    10000) or it has no leap seconds."""
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


@BOUNDED
@given(date_times())
@example("0001-01-01T00:00:00+14:00")
@example("9999-12-31T23:59:59.999999999-12:00")  # calendar: fixed
@example("9999")
def test_every_value_has_a_range_within_the_stored_calendar(text: str) -> None:
    rng = parse_range(text)
    assert rng is not None
    low, high = rng
    assert OPEN_START <= low <= high <= OPEN_END


@BOUNDED
@given(instants())
def test_an_instant_starts_where_python_puts_it_or_at_the_calendars_end(text: str) -> None:
    bounds = parse_bounds(text)
    assert bounds is not None
    low, _ = parse_range(text) or (None, None)
    expected = _python_utc(text)
    if expected is not None:
        assert low == expected
        assert bounds[0] == (expected - OPEN_START) // _US
    elif ":60" not in text:  # beyond the calendar: clamped to its nearest end
        assert low in (OPEN_START, OPEN_END)
        assert (bounds[0] < 0) == (low == OPEN_START)


@BOUNDED
@given(r4_dates())
def test_a_date_covers_its_whole_year_month_or_day(text: str) -> None:
    low, high = parse_range(text) or (None, None)
    assert low is not None and high is not None
    assert low.isoformat()[: len(text)] == text
    assert high.isoformat()[: len(text)] == text
    # The next microsecond is in the next period (or past the calendar).
    if high < OPEN_END:
        assert (high + _US).isoformat()[: len(text)] != text
    assert low.time() == datetime.min.time()


@pytest.mark.parametrize(
    "text",
    [
        "²⁰²⁴",  # not ASCII digits
        "\u0662\u0660\u0662\u0664-\u0660\u0661-\u0660\u0661",  # Arabic-Indic digits
        "0000",
        "2023-02-29",
        "2024-13",
        "2024-01-01T24:00:00Z",
        "2024-01-01T10:60:00Z",
        "2024-01-01T10:00:61Z",
        "2024-01-01T10:00:00+24:00",
        "2024-01-01T10:00:00+10:60",
        "2024-01-01T",
        "2024-01-01 10:00:00Z",
    ],
)
def test_what_is_not_a_date_has_no_range(text: str) -> None:
    assert parse_range(text) is None
    assert parse_bounds(text) is None


def test_a_leap_second_is_the_last_instant_of_its_minute() -> None:
    last = datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_range("2016-12-31T23:59:60Z") == (last, last)
    assert parse_range("2016-12-31T23:59:60.5Z") == (last, last)


@given(st.timedeltas())
@settings(max_examples=100, deadline=None, derandomize=True, database=None)
def test_shifting_stays_within_the_calendar(delta: timedelta) -> None:
    for start in (OPEN_START, OPEN_END, datetime(2024, 1, 1, tzinfo=UTC)):
        moved = shifted(start, delta)
        assert OPEN_START <= moved <= OPEN_END
        try:
            exact = start + delta
        except OverflowError:
            continue
        assert moved == min(max(exact, OPEN_START), OPEN_END)
