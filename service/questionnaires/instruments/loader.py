"""Load the built-in Questionnaires, CodeSystems and ValueSets from the JSON beside this module.

The files are read once per process (they are package data and never change at run time);
every public function hands out deep copies so callers may mutate what they get.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any, Final

#: Instrument key -> file name. The key is also the Questionnaire ``id``.
INSTRUMENT_FILES: Final = {
    "taps": "taps.questionnaire.json",
    "audit-c": "audit-c.questionnaire.json",
    "dast-10": "dast-10.questionnaire.json",
    "overdose-risk": "overdose-risk.questionnaire.json",
}
CODE_SYSTEM_FILES: Final = (
    "overdose-risk-factor.codesystem.json",
    "screening-item.codesystem.json",
    "screening-answer.codesystem.json",
    "screening-interpretation.codesystem.json",
)
VALUE_SET_FILES: Final = (
    "yes-no.valueset.json",
    "taps-frequency.valueset.json",
    "overdose-risk-factor.valueset.json",
)


def _read(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def _instruments() -> dict[str, dict[str, Any]]:
    return {key: _read(name) for key, name in INSTRUMENT_FILES.items()}


@cache
def _code_systems() -> tuple[dict[str, Any], ...]:
    return tuple(_read(name) for name in CODE_SYSTEM_FILES)


@cache
def _value_sets() -> tuple[dict[str, Any], ...]:
    return tuple(_read(name) for name in VALUE_SET_FILES)


def load_builtin_instruments() -> dict[str, dict[str, Any]]:
    """Built-in Questionnaires keyed ``taps``, ``audit-c``, ``dast-10``, ``overdose-risk``."""
    return copy.deepcopy(_instruments())


def builtin_code_systems() -> list[dict[str, Any]]:
    """Our CodeSystems (risk factors, local item/answer codes, interpretation bands)."""
    return copy.deepcopy(list(_code_systems()))


def builtin_value_sets() -> list[dict[str, Any]]:
    """ValueSets a Questionnaire may name in ``answerValueSet`` without containing them."""
    return copy.deepcopy(list(_value_sets()))


def find_value_set(canonical: str) -> dict[str, Any] | None:
    """A built-in ValueSet by ``url`` or ``url|version`` (read-only: do not mutate)."""
    url, _, version = canonical.partition("|")
    for value_set in _value_sets():
        if value_set.get("url") == url and (not version or value_set.get("version") == version):
            return value_set
    return None


def find_code_system(url: str) -> dict[str, Any] | None:
    """A built-in CodeSystem by ``url`` (read-only: do not mutate)."""
    for code_system in _code_systems():
        if code_system.get("url") == url:
            return code_system
    return None
