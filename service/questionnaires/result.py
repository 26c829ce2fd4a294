"""What scoring produces: scores with their bands, the triage outcome, and the client totals
that disagreed with ours. Plain frozen dataclasses, FHIR-neutral except ``Coding.to_fhir``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

Number = int | Decimal
ScoreRole = Literal["total", "subscore"]


@dataclass(frozen=True)
class Coding:
    system: str | None
    code: str
    display: str | None = None

    @classmethod
    def from_fhir(cls, data: Any) -> Coding | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("code"), str):
            return None
        system = data.get("system")
        display = data.get("display")
        return cls(
            system if isinstance(system, str) else None,
            data["code"],
            display if isinstance(display, str) else None,
        )

    def to_fhir(self) -> dict[str, str]:
        out = {"code": self.code}
        if self.system is not None:
            out = {"system": self.system, **out}
        if self.display is not None:
            out["display"] = self.display
        return out


@dataclass(frozen=True)
class Band:
    """A named range of a score; ``low``/``high`` are inclusive, None means unbounded."""

    code: Coding
    low: Decimal | None = None
    high: Decimal | None = None
    sex: str | None = None  # administrative-gender code; None = applies whatever the sex

    def contains(self, value: Number) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Score:
    """One calculated item of the Questionnaire, recomputed by the service."""

    link_id: str
    text: str | None
    codes: tuple[Coding, ...]
    role: ScoreRole
    value: Number | None  # None when the expression gave no value
    band: Band | None
    group_link_id: str | None = None  # innermost enclosing group, e.g. the TAPS substance
    group_text: str | None = None


@dataclass(frozen=True)
class ScoreMismatch:
    """The client sent a value for a calculated item that differs from ours (ours is used)."""

    link_id: str
    client_value: Any
    computed_value: Number | None


@dataclass(frozen=True)
class TriageResult:
    """Outcome of a Questionnaire's triage rule (e.g. post-release overdose checklist)."""

    rule_version: str
    code: Coding  # what the Observation is about
    result: Coding
    flagged: bool  # True when at least one condition held
    factors: tuple[Coding, ...]  # the conditions that held, in rule order
    rule_name: str | None = None


@dataclass(frozen=True)
class ScoreResult:
    questionnaire: str  # canonical url|version the scoring definitions came from
    scores: tuple[Score, ...] = ()
    triage: TriageResult | None = None
    mismatches: tuple[ScoreMismatch, ...] = ()
    sex: str | None = None  # the sex used to choose sex-specific bands

    @property
    def totals(self) -> tuple[Score, ...]:
        return tuple(s for s in self.scores if s.role == "total")

    @property
    def subscores(self) -> tuple[Score, ...]:
        return tuple(s for s in self.scores if s.role == "subscore")

    @property
    def total(self) -> Score | None:
        """The single total when the instrument has exactly one."""
        totals = self.totals
        return totals[0] if len(totals) == 1 else None

    @property
    def bands(self) -> tuple[Band, ...]:
        return tuple(s.band for s in self.scores if s.band is not None)

    def score(self, link_id: str) -> Score:
        for score in self.scores:
            if score.link_id == link_id:
                return score
        raise KeyError(link_id)
