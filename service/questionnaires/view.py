"""A plain JSON form of a Questionnaire for a jail UI that does not speak FHIR.

Shape (every key always present, None/[] when empty)::

    {"key", "url", "version", "canonical", "title", "status", "description", "copyright",
     "items": [
        {"link_id", "text", "type", "required", "repeats", "read_only", "calculated",
         "help",                                   # text of help/flyover display children
         "choices": [{"code", "system", "display", "score"}],   # coded options
         "allow_free_text",                        # open-choice
         "min", "max",                             # minValue / maxValue
         "enable_when": [{"question", "operator", "answer"}],  # answer: code string for codes
         "enable_behavior": "all" | "any",
         "bands": [{"code", "display", "low", "high", "sex"}],  # score items
         "items": [...]}],                         # children (groups, nested questions)
     "triage": {"name", "version", "flag": {"code", "display"},
                "conditions": [{"factor", "display"}]} | None}

The UI answers by ``link_id`` (see ``answers.response_from_answers``), sending a choice's
``code``. It shows an item only while its ``enable_when`` rules hold (see
``enablement`` for the exact semantics; ``!=`` also holds when the question is unanswered).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from service.questionnaires.bands import parse_bands
from service.questionnaires.definition import ItemDef, QuestionnaireIndex, extension
from service.questionnaires.triage import parse_triage_rule
from service.questionnaires.urls import (
    HIDDEN_EXT,
    ITEM_CONTROL_EXT,
    MAX_VALUE_EXT,
    MIN_VALUE_EXT,
)
from service.questionnaires.values import TypedValue, typed_values

_HELP_CONTROLS = frozenset({"help", "flyover"})


def instrument_view(questionnaire: Mapping[str, Any]) -> dict[str, Any]:
    index = QuestionnaireIndex(questionnaire)
    url = questionnaire.get("url")
    version = questionnaire.get("version")
    rule, _problems = parse_triage_rule(questionnaire)
    triage = None
    if rule is not None:
        triage = {
            "name": rule.name,
            "version": rule.version,
            "flag": {"code": rule.positive.code, "display": rule.positive.display},
            "conditions": [
                {"factor": c.factor.code, "display": c.factor.display} for c in rule.conditions
            ],
        }
    return {
        "key": questionnaire.get("id") or questionnaire.get("name"),
        "url": url,
        "version": version,
        "canonical": f"{url}|{version}" if url and version else url,
        "title": questionnaire.get("title") or questionnaire.get("name"),
        "status": questionnaire.get("status"),
        "description": questionnaire.get("description"),
        "copyright": questionnaire.get("copyright"),
        "items": [_item(index, item) for item in index.roots if not _is_help(item)],
        "triage": triage,
    }


def _is_help(item: ItemDef) -> bool:
    if item.type != "display" or item.parent is None:
        return False
    control = extension(item.data, ITEM_CONTROL_EXT)
    concept = control.get("valueCodeableConcept") if control else None
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return any(isinstance(c, Mapping) and c.get("code") in _HELP_CONTROLS for c in codings or [])


def _item(index: QuestionnaireIndex, item: ItemDef) -> dict[str, Any]:
    help_texts = [c.text for c in item.children if _is_help(c) and c.text]
    hidden = extension(item.data, HIDDEN_EXT)
    view: dict[str, Any] = {
        "link_id": item.link_id,
        "text": item.text,
        "type": item.type,
        "required": item.required,
        "repeats": item.repeats,
        "read_only": item.data.get("readOnly") is True or item.is_calculated,
        "calculated": item.is_calculated,
        "hidden": bool(hidden and hidden.get("valueBoolean") is True),
        "help": "\n".join(help_texts) or None,
        "choices": [],
        "allow_free_text": item.type == "open-choice",
        "min": _limit(item, MIN_VALUE_EXT),
        "max": _limit(item, MAX_VALUE_EXT),
        "enable_when": [
            _rule(c) for c in item.data.get("enableWhen") or [] if isinstance(c, Mapping)
        ],
        "enable_behavior": item.data.get("enableBehavior") or "all",
        "bands": [],
        "items": [_item(index, child) for child in item.children if not _is_help(child)],
    }
    if item.type in ("choice", "open-choice"):
        view["choices"] = [
            {
                "code": option.code if option.code is not None else _simple(option.value),
                "system": option.value.value.get("system")
                if option.value.kind == "Coding"
                else None,
                "display": option.display,
                "score": _number(option.weight),
            }
            for option in index.options(item).options
        ]
    if item.is_calculated:
        bands, _problems = parse_bands(item)
        view["bands"] = [
            {
                "code": band.code.code,
                "display": band.code.display,
                "low": _number(band.low),
                "high": _number(band.high),
                "sex": band.sex,
            }
            for band in bands
        ]
    return view


def _rule(condition: Mapping[str, Any]) -> dict[str, Any]:
    answers = typed_values(condition, "answer")
    return {
        "question": condition.get("question"),
        "operator": condition.get("operator"),
        "answer": _simple(answers[0]) if answers else None,
    }


def _simple(value: TypedValue) -> Any:
    if value.kind == "Coding":
        return value.value.get("code")
    if value.kind == "Quantity":
        return value.value.get("value")
    if value.kind == "Reference":
        return value.value.get("reference")
    return value.value


def _limit(item: ItemDef, url: str) -> Any:
    ext = extension(item.data, url)
    values = typed_values(ext) if ext else []
    return values[0].value if values else None


def _number(value: Decimal | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)
