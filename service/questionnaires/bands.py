"""Interpretation bands carried on a score item as our ``score-band`` extension.

    {"url": SCORE_BAND_EXT, "extension": [
        {"url": "code", "valueCoding": {"system": ..., "code": ..., "display": ...}},
        {"url": "low", "valueInteger": 4},        # inclusive; omit for "up to high"
        {"url": "high", "valueInteger": 12},      # inclusive; omit for "and above"
        {"url": "sex", "valueCode": "female"}]}   # optional: administrative-gender code

Choosing a band: when bands name a sex, those for the person's sex are used; when the sex is
unknown or has no bands of its own, the bands without ``sex`` apply. Bands of one set must not
overlap; ``check_questionnaire`` enforces that.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from service.questionnaires.definition import ItemDef, extensions
from service.questionnaires.result import Band, Coding, Number
from service.questionnaires.urls import SCORE_BAND_EXT
from service.questionnaires.values import is_number, to_decimal

SEXES = frozenset({"male", "female", "other", "unknown"})


def parse_bands(item: ItemDef) -> tuple[list[Band], list[str]]:
    """The item's bands, and a message for each malformed one (skipped)."""
    bands: list[Band] = []
    problems: list[str] = []
    for n, ext in enumerate(extensions(item.data, SCORE_BAND_EXT)):
        parts = {p.get("url"): p for p in ext.get("extension") or [] if isinstance(p, Mapping)}
        code = Coding.from_fhir(parts.get("code", {}).get("valueCoding"))
        sex = parts.get("sex", {}).get("valueCode")
        if code is None:
            problems.append(f"band {n + 1} has no code (sub-extension 'code' with valueCoding)")
            continue
        try:
            low = _bound(parts.get("low"))
            high = _bound(parts.get("high"))
        except ValueError:
            problems.append(f"band '{code.code}': low/high must be valueInteger or valueDecimal")
            continue
        if low is not None and high is not None and low > high:
            problems.append(f"band '{code.code}': low {low} is above high {high}")
            continue
        if sex is not None and sex not in SEXES:
            problems.append(f"band '{code.code}': sex must be one of {', '.join(sorted(SEXES))}")
            continue
        bands.append(Band(code, low, high, sex))
    problems.extend(_overlaps(bands))
    return bands, problems


def _bound(part: Mapping[str, Any] | None) -> Decimal | None:
    if part is None:
        return None
    for key in ("valueInteger", "valueDecimal"):
        if is_number(part.get(key)):
            return to_decimal(part[key])
    raise ValueError("not a number")


def _overlaps(bands: list[Band]) -> list[str]:
    problems = []
    for i, a in enumerate(bands):
        for b in bands[i + 1 :]:
            if a.sex != b.sex:
                continue
            a_low = a.low if a.low is not None else Decimal("-Infinity")
            a_high = a.high if a.high is not None else Decimal("Infinity")
            b_low = b.low if b.low is not None else Decimal("-Infinity")
            b_high = b.high if b.high is not None else Decimal("Infinity")
            if a_low <= b_high and b_low <= a_high:
                problems.append(f"bands '{a.code.code}' and '{b.code.code}' overlap")
    return problems


def select_band(bands: list[Band], value: Number | None, *, sex: str | None) -> Band | None:
    if value is None:
        return None
    own = [b for b in bands if sex is not None and b.sex == sex]
    candidates = own or [b for b in bands if b.sex is None]
    return next((b for b in candidates if b.contains(value)), None)
