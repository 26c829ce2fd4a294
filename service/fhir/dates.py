"""FHIR date, dateTime and instant values as UTC ranges at their stated precision.

``2024`` is all of 2024, ``2024-05-02`` that whole day, ``2024-05-02T10:15`` that minute. The
search spec compares ranges, so both stored values and search values become ``[low, high]``
with an inclusive ``high`` (the last microsecond of the range).

R4's dates run from 0001 to 9999 in local time, so a value's UTC range can reach past either
end of Python's ``datetime`` (``0001-01-01T00:00:00+14:00`` is an instant of year 0, the day
``9999-12-31`` ends at the start of year 10000). Ranges are worked out in whole microseconds,
which cannot overflow, and only then clamped to ``[OPEN_START, OPEN_END]``.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, timedelta

# [0-9], not \d: \d and int() also take other scripts' digits, which R4 does not.
_DATE_RE = re.compile(
    r"^(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?P<f>\.[0-9]{1,9})?)?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?$"
)
_ONE_US = timedelta(microseconds=1)
_US_PER_SECOND = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_SECOND

# The stored ends of a Period that has no start or no end: it runs from, or on to, for ever.
# Finite instants rather than NULL, so that every date comparison is one range over an index
# (``high >= X OR high IS NULL`` made PostgreSQL walk every date row of the parameter) and
# both databases store and order them alike. They are also the limits of every stored range.
OPEN_START = datetime(1, 1, 1, tzinfo=UTC)
OPEN_END = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_LAST_US = (OPEN_END - OPEN_START) // _ONE_US


def parse_bounds(text: str) -> tuple[int, int] | None:
    """The range a FHIR date/dateTime/instant covers, as microseconds since ``OPEN_START``
    (unclamped: below 0 or past ``OPEN_END`` at the ends of the calendar), or None when it is
    not one. A time without a zone is read as UTC (search values may omit it; stored values
    cannot, validation rejects them)."""
    match = _DATE_RE.match(text)
    if not match:
        return None
    g = match.groupdict()
    try:
        year = int(g["y"])
        if g["m"] is None:
            first = date(year, 1, 1).toordinal()
            return _day_us(first), _day_us(first + (366 if calendar.isleap(year) else 365)) - 1
        month = int(g["m"])
        if g["d"] is None:
            first = date(year, month, 1).toordinal()
            days = calendar.monthrange(year, month)[1]
            return _day_us(first), _day_us(first + days) - 1
        day_start = _day_us(date(year, month, int(g["d"])).toordinal())
    except ValueError:  # year 0, month 13, 30 February...
        return None
    if g["H"] is None:
        return day_start, day_start + _US_PER_DAY - 1
    hour, minute = int(g["H"]), int(g["M"])
    second = int(g["S"] or 0)
    if hour > 23 or minute > 59 or second > 60:
        return None
    offset = 0
    if g["tz"] and g["tz"] != "Z":
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
        if hours > 23 or minutes > 59:
            return None
        offset = (hours * 3600 + minutes * 60) * (1 if g["tz"][0] == "+" else -1)
    start = day_start + (hour * 3600 + minute * 60 - offset) * _US_PER_SECOND
    if g["S"] is None:
        return start, start + 60 * _US_PER_SECOND - 1
    if second == 60:
        # A leap second (R4's pattern allows it): the last instant of its minute, which is as
        # near as a calendar without leap seconds comes.
        last = start + 60 * _US_PER_SECOND - 1
        return last, last
    start += second * _US_PER_SECOND
    frac = g["f"]
    if frac is None:
        return start, start + _US_PER_SECOND - 1
    digits = frac[1:]
    start += int((digits + "000000")[:6])
    # Precision below a microsecond collapses to one instant.
    return start, start + 10 ** max(0, 6 - len(digits)) - 1


def _day_us(ordinal: int) -> int:
    return (ordinal - 1) * _US_PER_DAY


def instant_at(micros: int) -> datetime:
    """The UTC instant ``micros`` after ``OPEN_START``, clamped to ``[OPEN_START, OPEN_END]``."""
    return OPEN_START + timedelta(microseconds=min(max(micros, 0), _LAST_US))


def parse_range(text: str) -> tuple[datetime, datetime] | None:
    """The UTC range a FHIR date/dateTime/instant covers (``parse_bounds``), clamped to what
    the databases store: a range reaching past year 1 or 9999 ends at ``OPEN_START`` or
    ``OPEN_END``, so an instant of year 0 is indexed, and found, as ``OPEN_START``."""
    bounds = parse_bounds(text)
    if bounds is None:
        return None
    return instant_at(bounds[0]), instant_at(bounds[1])


def shifted(value: datetime, delta: timedelta) -> datetime:
    """``value + delta``, clamped to ``[OPEN_START, OPEN_END]`` instead of overflowing."""
    return instant_at((value - OPEN_START + delta) // _ONE_US)


def format_instant(value: datetime) -> str:
    """``meta.lastUpdated`` form: UTC, millisecond precision."""
    # isoformat is C; strftime cost ~3 µs, and every response and AuditEvent formats some.
    return value.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
