"""FHIR date, dateTime and instant values as UTC ranges at their stated precision.

``2024`` is all of 2024, ``2024-05-02`` that whole day, ``2024-05-02T10:15`` that minute. The
search spec compares ranges, so both stored values and search values become ``[low, high]``
with an inclusive ``high`` (the last microsecond of the range).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d{1,9})?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_ONE_US = timedelta(microseconds=1)

# The stored ends of a Period that has no start or no end: it runs from, or on to, for ever.
# Finite instants rather than NULL, so that every date comparison is one range over an index
# (``high >= X OR high IS NULL`` made PostgreSQL walk every date row of the parameter) and
# both databases store and order them alike.
OPEN_START = datetime(1, 1, 1, tzinfo=UTC)
OPEN_END = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def parse_range(text: str) -> tuple[datetime, datetime] | None:
    """The UTC range a FHIR date/dateTime/instant covers, or None when it is not one.

    A time without a zone is read as UTC (search values may omit it; stored values cannot,
    validation rejects them).
    """
    match = _DATE_RE.match(text)
    if not match:
        return None
    g = match.groupdict()
    try:
        year = int(g["y"])
        if g["m"] is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return low, datetime(year + 1, 1, 1, tzinfo=UTC) - _ONE_US
        month = int(g["m"])
        if g["d"] is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            nxt = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
            return low, nxt - _ONE_US
        day = int(g["d"])
        if g["H"] is None:
            low = datetime(year, month, day, tzinfo=UTC)
            return low, low + timedelta(days=1) - _ONE_US
        tz: tzinfo = UTC
        if g["tz"] and g["tz"] != "Z":
            sign = 1 if g["tz"][0] == "+" else -1
            hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        hour, minute = int(g["H"]), int(g["M"])
        if g["S"] is None:
            low = datetime(year, month, day, hour, minute, tzinfo=tz)
            return low.astimezone(UTC), (low + timedelta(minutes=1) - _ONE_US).astimezone(UTC)
        second = int(g["S"])
        frac = g["f"]
        if frac is None:
            low = datetime(year, month, day, hour, minute, second, tzinfo=tz)
            return low.astimezone(UTC), (low + timedelta(seconds=1) - _ONE_US).astimezone(UTC)
        digits = frac[1:]
        micro = int((digits + "000000")[:6])
        low = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        # Precision below a microsecond collapses to one instant.
        width = timedelta(microseconds=10 ** max(0, 6 - len(digits)))
        return low.astimezone(UTC), (low + width - _ONE_US).astimezone(UTC)
    except ValueError:
        return None


def format_instant(value: datetime) -> str:
    """``meta.lastUpdated`` form: UTC, millisecond precision."""
    # isoformat is C; strftime cost ~3 µs, and every response and AuditEvent formats some.
    return value.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
