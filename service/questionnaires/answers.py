"""Build a QuestionnaireResponse from simple answers keyed by linkId (the jail UI's format).

Values per item type: choice/open-choice take the option's ``code`` as a string (or
``"system|code"`` when two options share a code, or a Coding dict); open-choice also takes free
text; boolean/integer/decimal/string/text/url take the JSON value; date/dateTime/time take
ISO strings or ``date``/``datetime``/``time`` objects (datetimes must be timezone-aware);
reference takes ``"Type/id"`` or a Reference dict; quantity and attachment take dicts.
Repeating items take a list. ``None`` or ``[]`` means unanswered.

The result is placed in the Questionnaire's structure (groups created as needed, follow-up
questions under their parent's answer). Nothing else is checked here: run ``validate_response``
on the result for required items, skip logic and the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from service.errors import BusinessRuleError, Issue
from service.questionnaires.definition import ItemDef, Option, QuestionnaireIndex, canonical_of
from service.questionnaires.tree import RESPONSE_ROOT, item_step
from service.questionnaires.validate import RESPONSE_STATUSES
from service.questionnaires.values import TypedValue, is_number, shape_problem

_PLAIN_KINDS = {
    "boolean": "Boolean",
    "integer": "Integer",
    "decimal": "Decimal",
    "string": "String",
    "text": "String",
    "url": "Uri",
    "quantity": "Quantity",
    "attachment": "Attachment",
}


def response_from_answers(
    questionnaire: Mapping[str, Any],
    answers: Mapping[str, Any],
    *,
    subject: str | Mapping[str, Any],
    author: str | Mapping[str, Any] | None,
    authored: str | datetime,
    status: str = "completed",
) -> dict[str, Any]:
    """A QuestionnaireResponse dict; BusinessRuleError lists every unknown key and bad value."""
    index = QuestionnaireIndex(questionnaire)
    issues: list[Issue] = []
    if status not in RESPONSE_STATUSES:
        issues.append(
            Issue(
                "error",
                "value",
                f"status must be one of {', '.join(sorted(RESPONSE_STATUSES))}",
                ("QuestionnaireResponse.status",),
            )
        )
    converted: dict[str, list[dict[str, Any]]] = {}
    for key, raw in answers.items():
        item = index.by_link_id.get(key)
        path = _path(item) if item is not None else RESPONSE_ROOT + item_step(str(key))
        problems, built = _convert_item(index, item, key=key, raw=raw)
        issues.extend(Issue("error", code, message, (path,)) for code, message in problems)
        if built:
            converted[key] = built
    items = _place(index.roots, converted=converted, issues=issues)
    if issues:
        count = len(issues)
        raise BusinessRuleError(
            f"{count} problem{'s' if count > 1 else ''} with the answers", issues=issues
        )
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": canonical_of(questionnaire),
        "status": status,
        "subject": _reference(subject),
        "authored": _instant(authored),
    }
    if author is not None:
        response["author"] = _reference(author)
    response["item"] = items
    return response


def _path(item: ItemDef) -> str:
    return RESPONSE_ROOT + "".join(item_step(i.link_id) for i in [*item.ancestors(), item])


def _convert_item(
    index: QuestionnaireIndex, item: ItemDef | None, *, key: str, raw: Any
) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    if item is None:
        return [("structure", f"'{key}' is not a linkId of this Questionnaire")], []
    if not item.is_question:
        return [("structure", f"'{key}' is a {item.type} item and takes no answer")], []
    if item.is_calculated:
        return [("business-rule", f"'{key}' is calculated by the service; do not send it")], []
    if raw is None or raw == []:
        return [], []
    values = raw if isinstance(raw, list) else [raw]
    if len(values) > 1 and not item.repeats:
        return [("invariant", f"'{key}' takes one answer, got {len(values)}")], []
    problems: list[tuple[str, str]] = []
    built = []
    for value in values:
        problem, answer = _convert_value(index, item, value=value)
        if problem is not None:
            problems.append(problem)
        elif answer is not None:
            built.append(answer)
    return problems, built


def _convert_value(
    index: QuestionnaireIndex, item: ItemDef, *, value: Any
) -> tuple[tuple[str, str] | None, dict[str, Any] | None]:
    key = item.link_id
    if item.type in ("choice", "open-choice"):
        return _convert_choice(index, item, value=value)
    kind = _PLAIN_KINDS.get(item.type)
    converted: Any = value
    if item.type == "decimal" and isinstance(value, Decimal):
        converted = float(value)
    elif item.type == "date" and isinstance(value, date) and not isinstance(value, datetime):
        kind, converted = "Date", value.isoformat()
    elif item.type == "date":
        kind = "Date"
    elif item.type == "dateTime":
        kind = "DateTime"
        if isinstance(value, datetime):
            if value.tzinfo is None:
                return ("value", f"'{key}' needs a timezone-aware datetime"), None
            converted = value.isoformat()
    elif item.type == "time":
        kind = "Time"
        if isinstance(value, time):
            converted = value.replace(tzinfo=None).isoformat()
    elif item.type == "reference":
        kind = "Reference"
        if isinstance(value, str):
            converted = {"reference": value}
    if kind is None:
        return ("structure", f"'{key}' has unsupported type '{item.type}'"), None
    problem = shape_problem(kind, converted)
    if problem is not None:
        return ("value", f"answer to '{key}' ({item.type}) {problem}"), None
    return None, {"value" + kind: converted}


def _convert_choice(
    index: QuestionnaireIndex, item: ItemDef, *, value: Any
) -> tuple[tuple[str, str] | None, dict[str, Any] | None]:
    key = item.link_id
    resolved = index.options(item)
    if not resolved.resolved:
        return (
            "not-supported",
            f"answerValueSet '{resolved.source}' of '{key}' is neither contained nor built in",
        ), None
    options = resolved.options
    matches: list[Option] = []
    if isinstance(value, str):
        system, bar, code = value.rpartition("|")
        matches = [
            o
            for o in options
            if (o.code == code and (not bar or o.value.value.get("system") == system))
            or (o.value.kind == "String" and o.value.value == value)
        ]
    elif isinstance(value, Mapping):
        matches = [
            o
            for o in options
            if o.value.kind == "Coding"
            and o.code == value.get("code")
            and value.get("system") in (None, o.value.value.get("system"))
        ]
    elif is_number(value) and isinstance(value, int):
        matches = [o for o in options if o.value.kind == "Integer" and o.value.value == value]
    if len(matches) == 1:
        return None, _option_answer(matches[0].value)
    if len(matches) > 1:
        return (
            "code-invalid",
            f"'{value}' matches several options of '{key}'; send 'system|code'",
        ), None
    if item.type == "open-choice" and isinstance(value, str) and value.strip():
        return None, {"valueString": value}
    allowed = ", ".join(str(o.code if o.code is not None else o.value.value) for o in options)
    shown = value if isinstance(value, str | int) and not isinstance(value, bool) else "value"
    return ("code-invalid", f"'{shown}' is not an option of '{key}' (options: {allowed})"), None


def _option_answer(value: TypedValue) -> dict[str, Any]:
    if value.kind == "Coding":
        coding = {k: value.value[k] for k in ("system", "code", "display") if k in value.value}
        return {"valueCoding": coding}
    return {"value" + value.kind: value.value}


def _place(
    items: list[ItemDef],
    *,
    converted: dict[str, list[dict[str, Any]]],
    issues: list[Issue],
) -> list[dict[str, Any]]:
    placed: list[dict[str, Any]] = []
    for item in items:
        if item.type == "display":
            continue
        children = _place(item.children, converted=converted, issues=issues)
        if item.type == "group":
            if children:
                placed.append(_response_item(item, item=children))
            continue
        answers = converted.get(item.link_id)
        if children:
            if not answers:
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"'{item.link_id}' must be answered to answer its follow-up items",
                        (_path(item),),
                    )
                )
                continue
            # R4: follow-ups of a question sit under its answer
            answers = [{**answers[0], "item": children}, *answers[1:]]
        if answers:
            placed.append(_response_item(item, answer=answers))
    return placed


def _response_item(definition: ItemDef, **content: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"linkId": definition.link_id}
    if definition.text:
        out["text"] = definition.text
    out.update(content)
    return out


def _reference(value: str | Mapping[str, Any]) -> dict[str, Any]:
    return {"reference": value} if isinstance(value, str) else dict(value)


def _instant(value: str | datetime) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("authored must be timezone-aware")
        return value.isoformat()
    return value
