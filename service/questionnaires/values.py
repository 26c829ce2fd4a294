"""Typed answer values: which ``value[x]`` an item type takes, JSON shape checks, equality and
ordering (used by answerOption matching and by enableWhen)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

#: The R4 ``value[x]`` suffixes a QuestionnaireResponse answer (or answerOption / enableWhen
#: answer) can carry.
VALUE_KINDS: Final = (
    "Boolean",
    "Decimal",
    "Integer",
    "Date",
    "DateTime",
    "Time",
    "String",
    "Uri",
    "Attachment",
    "Coding",
    "Quantity",
    "Reference",
)

#: Answer kinds allowed per item type, before answerOption narrows choice items.
KINDS_BY_ITEM_TYPE: Final[Mapping[str, frozenset[str]]] = {
    "boolean": frozenset({"Boolean"}),
    "decimal": frozenset({"Decimal"}),
    "integer": frozenset({"Integer"}),
    "date": frozenset({"Date"}),
    "dateTime": frozenset({"DateTime"}),
    "time": frozenset({"Time"}),
    "string": frozenset({"String"}),
    "text": frozenset({"String"}),
    "url": frozenset({"Uri"}),
    "choice": frozenset({"Coding", "Integer", "Date", "Time", "String", "Reference"}),
    "open-choice": frozenset({"Coding", "Integer", "Date", "Time", "String", "Reference"}),
    "attachment": frozenset({"Attachment"}),
    "reference": frozenset({"Reference"}),
    "quantity": frozenset({"Quantity"}),
}
#: Item types that never carry answers.
NON_QUESTION_TYPES: Final = frozenset({"group", "display"})
ITEM_TYPES: Final = frozenset(KINDS_BY_ITEM_TYPE) | NON_QUESTION_TYPES

_DATE_RE: Final = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
)
_DATETIME_RE: Final = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?"
)
_TIME_RE: Final = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?")


@dataclass(frozen=True)
class TypedValue:
    """One ``value[x]`` (or ``answer[x]``) taken out of its element."""

    kind: str
    value: Any


def typed_values(element: Mapping[str, Any], prefix: str = "value") -> list[TypedValue]:
    """Every ``<prefix>[x]`` present on the element (more than one is a structural error)."""
    return [
        TypedValue(kind, element[prefix + kind]) for kind in VALUE_KINDS if prefix + kind in element
    ]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def to_decimal(value: Any) -> Decimal:
    """Exact decimal for a JSON number (floats go through ``str`` so 0.1 stays 0.1)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(str(value))
    return Decimal(int(value))


def shape_problem(kind: str, value: Any) -> str | None:
    """Why ``value`` is not a valid JSON rendering of the FHIR type, or None when it is."""
    match kind:
        case "Boolean":
            ok = isinstance(value, bool)
        case "Integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
        case "Decimal":
            ok = is_number(value)
        case "Date":
            return _date_problem(value)
        case "DateTime":
            return _datetime_problem(value)
        case "Time":
            ok = isinstance(value, str) and _TIME_RE.fullmatch(value) is not None
        case "String" | "Uri":
            ok = isinstance(value, str) and value.strip() != ""
        case "Coding":
            ok = isinstance(value, Mapping) and (
                isinstance(value.get("code"), str) or isinstance(value.get("display"), str)
            )
        case "Quantity":
            ok = isinstance(value, Mapping) and is_number(value.get("value"))
        case "Reference":
            ok = isinstance(value, Mapping) and any(
                k in value for k in ("reference", "identifier", "display")
            )
        case "Attachment":
            ok = isinstance(value, Mapping) and bool(value)
        case _:
            ok = False
    return None if ok else f"is not a valid {kind.lower()}"


def _date_problem(value: Any) -> str | None:
    if not isinstance(value, str) or _DATE_RE.fullmatch(value) is None:
        return "is not a valid date (YYYY, YYYY-MM or YYYY-MM-DD)"
    if len(value) == 10:
        try:
            date.fromisoformat(value)
        except ValueError:
            return "is not a calendar date"
    return None


def _datetime_problem(value: Any) -> str | None:
    if not isinstance(value, str) or _DATETIME_RE.fullmatch(value) is None:
        return "is not a valid dateTime (a time needs a timezone)"
    if len(value) >= 10:
        try:
            date.fromisoformat(value[:10])
        except ValueError:
            return "is not a calendar date"
    return None


def codings_match(candidate: Mapping[str, Any], reference: Mapping[str, Any]) -> bool:
    """Same code, and the same system when the reference names one.

    The reference is the Questionnaire side (answerOption, enableWhen); an answer that omits the
    system of a coded option does not match, because LOINC-style codes are ambiguous without it.
    """
    if candidate.get("code") != reference.get("code"):
        return False
    return reference.get("system") is None or candidate.get("system") == reference.get("system")


def values_equal(a: TypedValue, b: TypedValue) -> bool:
    """FHIR equality between an answer (``a``) and a Questionnaire-side value (``b``)."""
    if is_number(a.value) and is_number(b.value) and {a.kind, b.kind} <= {"Integer", "Decimal"}:
        return to_decimal(a.value) == to_decimal(b.value)
    if a.kind != b.kind:
        return False
    if a.kind == "Coding":
        return codings_match(a.value, b.value)
    if a.kind == "Quantity":
        return _quantity_order(a.value, b.value) == 0
    if a.kind == "Reference":
        return bool(a.value.get("reference")) and a.value.get("reference") == b.value.get(
            "reference"
        )
    if a.kind in ("Date", "DateTime", "Time"):
        return _temporal_order(a.value, b.value, kind=a.kind) == 0
    return bool(a.value == b.value)


def compare(a: TypedValue, b: TypedValue) -> int | None:
    """-1/0/1 ordering of ``a`` against ``b``, or None when the values cannot be ordered."""
    if is_number(a.value) and is_number(b.value) and {a.kind, b.kind} <= {"Integer", "Decimal"}:
        da, db = to_decimal(a.value), to_decimal(b.value)
        return (da > db) - (da < db)
    if a.kind != b.kind:
        return None
    if a.kind in ("Date", "DateTime", "Time"):
        return _temporal_order(a.value, b.value, kind=a.kind)
    if a.kind == "Quantity":
        return _quantity_order(a.value, b.value)
    if a.kind == "String" and isinstance(a.value, str) and isinstance(b.value, str):
        return (a.value > b.value) - (a.value < b.value)
    return None


def _temporal_order(a: Any, b: Any, *, kind: str) -> int | None:
    if not isinstance(a, str) or not isinstance(b, str):
        return None
    if kind == "DateTime" and len(a) > 10 and len(b) > 10:
        try:
            da = datetime.fromisoformat(a)
            db = datetime.fromisoformat(b)
        except ValueError:
            return None
        return (da > db) - (da < db)
    if len(a) != len(b):
        return None  # different precision: FHIRPath says "unknown"
    return (a > b) - (a < b)


def _quantity_order(a: Mapping[str, Any], b: Mapping[str, Any]) -> int | None:
    unit_a = (a.get("system"), a.get("code")) if a.get("code") else (None, a.get("unit"))
    unit_b = (b.get("system"), b.get("code")) if b.get("code") else (None, b.get("unit"))
    if unit_a != unit_b or not is_number(a.get("value")) or not is_number(b.get("value")):
        return None
    try:
        da, db = to_decimal(a["value"]), to_decimal(b["value"])
    except InvalidOperation:
        return None
    return (da > db) - (da < db)


def display_of(value: TypedValue) -> str:
    """Short human text for a value, for diagnostics (never includes free text answers)."""
    if value.kind == "Coding":
        system = value.value.get("system")
        code = value.value.get("code")
        return f"{system}|{code}" if system else str(code)
    if value.kind in ("String", "Attachment", "Reference"):
        return f"a {value.kind.lower()}"
    return repr(value.value)
