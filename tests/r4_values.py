"""Hypothesis strategies for R4 primitive values, weighted towards the edges of their ranges
(https://hl7.org/fhir/R4/datatypes.html#primitive)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import strategies as st

INTEGER_MIN, INTEGER_MAX = -(2**31), 2**31 - 1

_FIRST, _LAST = date(1, 1, 1), date(9999, 12, 31)  # calendar: fixed (R4's range)
_EDGE_DAYS = [_FIRST, _LAST, date(1, 12, 31), date(9999, 1, 1), date(2000, 2, 29)]

days = st.one_of(st.sampled_from(_EDGE_DAYS), st.dates(min_value=_FIRST, max_value=_LAST))


@st.composite
def r4_dates(draw: st.DrawFn) -> str:
    """A ``date``: YYYY, YYYY-MM or YYYY-MM-DD."""
    day = draw(days)
    text = day.isoformat()
    return text[: draw(st.sampled_from([4, 7, 10]))]


@st.composite
def offsets(draw: st.DrawFn) -> str:
    """A zone from -12:00 to +14:00 (R4's pattern: hours 00-13 with any minutes, or 14:00)."""
    if draw(st.booleans()):
        return draw(st.sampled_from(["Z", "+14:00", "-12:00", "+00:00", "-00:00"]))
    minutes = draw(st.integers(-12 * 60, 14 * 60))
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def times(draw: st.DrawFn) -> str:
    """hh:mm:ss with an optional fraction of 1-9 digits; the seconds may be a leap second."""
    hour = draw(st.sampled_from([0, 23]) | st.integers(0, 23))
    minute = draw(st.sampled_from([0, 59]) | st.integers(0, 59))
    second = draw(st.sampled_from([0, 59, 60]) | st.integers(0, 59))
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    if draw(st.booleans()):
        text += "." + draw(st.text("0123456789", min_size=1, max_size=9))
    return text


@st.composite
def instants(draw: st.DrawFn) -> str:
    """An ``instant``: a full date and time with a zone."""
    return f"{draw(days).isoformat()}T{draw(times())}{draw(offsets())}"


def date_times() -> st.SearchStrategy[str]:
    """A ``dateTime``: a ``date`` at any precision, or a full time with a zone."""
    return st.one_of(r4_dates(), instants())


integers = st.one_of(
    st.sampled_from([INTEGER_MIN, INTEGER_MIN + 1, -1, 0, 1, INTEGER_MAX - 1, INTEGER_MAX]),
    st.integers(INTEGER_MIN, INTEGER_MAX),
)
# Just past R4's 32 bits, and far past them.
integers_out_of_range = st.one_of(
    st.sampled_from([INTEGER_MIN - 1, INTEGER_MAX + 1, 2**63, -(2**63) - 1]),
    st.integers(INTEGER_MAX + 1, 2**62),
    st.integers(-(2**62), INTEGER_MIN - 1),
)

# Decimals as JSON text, as R4 allows them: up to 18 significant digits, trailing zeros (their
# precision is part of the value), exponents and negative zero.
decimals = st.one_of(
    st.sampled_from(
        [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1.50",
            "100.000",
            "1e308",
            "-1e308",
            "5e-324",
            "1E5",
            "1.5",
            "-2147483649",
            "123456789012345678",
            "0.123456789012345678",
            "-1.00000000000000001",
        ]
    ),
    st.decimals(
        min_value=Decimal("-1e17"),
        max_value=Decimal("1e17"),
        places=None,
        allow_nan=False,
        allow_infinity=False,
    )
    .filter(lambda d: len(d.as_tuple().digits) <= 18)
    .map(str),
)

_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."
# "." and ".." are R4 ids, but every HTTP client resolves them as dot segments of the URL
# (RFC 3986 5.2.4) before the server sees them.
ids = st.one_of(
    st.sampled_from(["a", "A" * 64, "-", "0", "a.b", "..a", "-.-"]),
    st.text(_ID_CHARS, min_size=1, max_size=64),
).filter(lambda s: s.strip(".") != "")

# R4 string: any Unicode but the control characters other than tab, CR and LF; not only
# whitespace (a value must carry content). Surrogates cannot be sent as UTF-8.
strings = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\r\n"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() != "")
