"""No source file holds a date that lies in the future: such a date rots with the calendar.

A referral must be made before the person's release, a consent must not have expired: code,
tests, benchmarks and demo data that need a future date compute it from now. A literal written
today as "a month ahead" passes every test until the day it lies in the past, and then breaks
every clean clone at once. This check fails on the day such a literal is written instead.

A line may keep a far-future literal that never needs to lie ahead of the clock (the end of
FHIR's date range, an edge value) by saying so with `calendar: fixed` in a comment on it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("service", "bench", "tests", "tools", "migrations")
SUFFIXES = {".py", ".lua", ".json", ".md"}
MARKER = "calendar: fixed"

# 2026-11-26 in text, or datetime(2026, 11, 26 / date(2026, 11, 26 in Python.
ISO_DATE = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d])")
CALL_DATE = re.compile(r"\b(?:datetime|date)\(\s*(\d{4}),\s*(\d{1,2}),\s*(\d{1,2})")


def future_literals(text: str, today: date) -> list[tuple[int, str]]:
    """(line number, literal) of every date in `text` after `today`, unmarked lines only."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if MARKER in line:
            continue
        for pattern in (ISO_DATE, CALL_DATE):
            for match in pattern.finditer(line):
                year, month, day = (int(part) for part in match.groups())
                try:
                    when = date(year, month, day)
                except ValueError:
                    continue
                # Years from 9000 on are sentinels (FHIR's dates end in 9999), not deadlines.
                if today < when and year < 9000:
                    found.append((number, match.group(0)))
    return found


def test_the_check_finds_a_future_date_and_honours_the_marker() -> None:
    today = date(2026, 12, 5)
    source = (
        'release = "2026-12-01T08:00:00Z"\n'
        "release = datetime(2027, 1, 2, 8)\n"  # calendar: fixed
        'end = "9999-12-31"\n'
        'expires = "2030-05-25"  # calendar: fixed\n'
        'version = "1.2.3-2027-01-01x"\n'
    )
    assert future_literals(source, today) == [(2, "datetime(2027, 1, 2")]  # calendar: fixed


def test_no_source_holds_a_date_in_the_future() -> None:
    today = datetime.now(UTC).date()
    offenders = []
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in SUFFIXES or ".venv" in path.parts or not path.is_file():
                continue
            for number, literal in future_literals(path.read_text(errors="replace"), today):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {literal}")
    assert not offenders, (
        "These dates lie in the future and will rot: compute them from now "
        f"(or mark a line that never needs to be ahead of the clock with '{MARKER}'):\n"
        + "\n".join(offenders)
    )
