"""Score a QuestionnaireResponse from its Questionnaire's own definitions.

1. Work on a copy of the response. Answers of disabled or unknown items are dropped, and any
   value the client sent for a calculated item is set aside (recorded as a mismatch if it
   differs from ours; client totals are never trusted).
2. Each coded answer gets its option's weight (``itemWeight``/``ordinalValue`` on the
   answerOption or on the answerValueSet concept) as an ``ordinalValue`` extension, so the
   expressions can use ``weight()``/``ordinal()`` or read the extension.
3. Every item with an SDC ``calculatedExpression`` is evaluated (FHIRPath, context = response
   root, with ``%resource``, ``%questionnaire`` and SDC ``variable``s of the Questionnaire and
   the item's ancestors), repeatedly until the values settle, so a total may use sub-scores.
   Calculated items are computed even inside disabled groups (a skipped TAPS-2 section scores
   0, "no use").
4. Bands come from our ``score-band`` extension, the triage outcome from our ``triage-rule``
   extension (both evaluated after the scores, so a rule may use them).

A definition that fails at run time (bad expression, non-numeric result) raises
BusinessRuleError: the response cannot be scored, and nothing half-scored is returned.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

from service.errors import BusinessRuleError, Issue
from service.questionnaires.bands import parse_bands, select_band
from service.questionnaires.definition import (
    ItemDef,
    QuestionnaireIndex,
    canonical_of,
    extension,
    extensions,
)
from service.questionnaires.enablement import Enablement
from service.questionnaires.fhirpath import FhirPathError, evaluate
from service.questionnaires.result import (
    Coding,
    Number,
    Score,
    ScoreMismatch,
    ScoreResult,
    ScoreRole,
)
from service.questionnaires.tree import QUESTIONNAIRE_ROOT, ResponseNode, build_tree
from service.questionnaires.triage import apply_triage_rule, parse_triage_rule
from service.questionnaires.urls import (
    FHIRPATH_LANGUAGE,
    ORDINAL_VALUE_EXT,
    SCORE_ROLE_EXT,
    VARIABLE_EXT,
    WEIGHT_EXTS,
)
from service.questionnaires.values import is_number, to_decimal, typed_values, values_equal


def score_response(
    questionnaire: Mapping[str, Any],
    response: Mapping[str, Any],
    *,
    sex: str | None = None,
) -> ScoreResult:
    """Recompute every score, band and triage outcome the Questionnaire defines.

    ``sex`` (administrative-gender code, e.g. from Patient.gender) picks sex-specific bands
    such as AUDIT-C's; without it the bands that name no sex apply. Call ``validate_response``
    first: scoring ignores what it cannot use rather than reporting it.
    """
    index = QuestionnaireIndex(questionnaire)
    work = copy.deepcopy(dict(response))
    definitions = copy.deepcopy(dict(questionnaire))  # fhirpathpy may annotate its inputs
    root = build_tree(index, work)
    client_values = _prepare(root, index=index, enablement=Enablement(index, root))
    score_items = [item for item in index.walk() if item.is_calculated]
    try:
        values = _calculate(score_items, work=work, definitions=definitions)
        rule, problems = parse_triage_rule(questionnaire)
        if problems:
            raise FhirPathError("; ".join(problems))
        triage = (
            apply_triage_rule(
                rule,
                work,
                questionnaire=definitions,
                variables=_variables([], work=work, definitions=definitions),
            )
            if rule is not None
            else None
        )
    except FhirPathError as exc:
        raise BusinessRuleError(
            f"Questionnaire {canonical_of(questionnaire)} cannot score this response: {exc}",
            issues=[
                Issue(
                    "error",
                    "processing",
                    f"Questionnaire {canonical_of(questionnaire)} cannot score this "
                    f"response: {exc}",
                    (QUESTIONNAIRE_ROOT,),
                )
            ],
        ) from exc
    scores = tuple(_score(item, values[item.link_id], sex=sex) for item in score_items)
    mismatches = tuple(
        ScoreMismatch(link_id, client, values.get(link_id))
        for link_id, client in client_values.items()
        if not _same_number(client, values.get(link_id))
    )
    return ScoreResult(
        questionnaire=canonical_of(questionnaire),
        scores=scores,
        triage=triage,
        mismatches=mismatches,
        sex=sex,
    )


def _prepare(
    root: ResponseNode, *, index: QuestionnaireIndex, enablement: Enablement
) -> dict[str, Any]:
    """Drop unusable answers, set client score values aside, attach option weights."""
    client_values: dict[str, Any] = {}
    for node in root.descendants():
        data = cast(dict[str, Any], node.data)
        item = node.definition
        if item is None or not enablement.node_enabled(node):
            data.pop("answer", None)
            continue
        if item.is_calculated:
            for answer in node.answers[:1]:
                sent = typed_values(answer)
                client_values[item.link_id] = sent[0].value if sent else None
            data.pop("answer", None)
            continue
        if item.type not in ("choice", "open-choice"):
            continue
        options = index.options(item).options
        for answer in node.answers:
            coding = answer.get("valueCoding")
            if not isinstance(coding, dict):
                continue
            # weights come only from the Questionnaire, never from the client's coding
            kept = [
                e
                for e in coding.get("extension") or []
                if not (isinstance(e, Mapping) and e.get("url") in WEIGHT_EXTS)
            ]
            for value in typed_values(answer)[:1]:
                option = next((o for o in options if values_equal(value, o.value)), None)
                if option is not None and option.weight is not None:
                    kept.append(
                        {"url": ORDINAL_VALUE_EXT, "valueDecimal": _json_number(option.weight)}
                    )
            if kept:
                coding["extension"] = kept
            else:
                coding.pop("extension", None)
    return client_values


def _calculate(
    items: list[ItemDef], *, work: dict[str, Any], definitions: Mapping[str, Any]
) -> dict[str, Number | None]:
    values: dict[str, Number | None] = {}
    for _ in range(len(items) + 1):
        changed = False
        for item in items:
            value = _evaluate_item(item, work=work, definitions=definitions)
            if item.link_id not in values or values[item.link_id] != value:
                changed = True
            values[item.link_id] = value
            _write(work, item, value=value)
        if not changed:
            return values
    raise FhirPathError("calculated items never settle (circular calculatedExpressions)")


def _evaluate_item(
    item: ItemDef, *, work: Mapping[str, Any], definitions: Mapping[str, Any]
) -> Number | None:
    expression = item.calculated_expression
    if expression is None:
        raise FhirPathError(f"item '{item.link_id}': calculatedExpression must be text/fhirpath")
    variables = _variables([*item.ancestors(), item], work=work, definitions=definitions)
    result = evaluate(expression, work, questionnaire=definitions, variables=variables)
    if not result:
        return None
    if len(result) > 1 or not is_number(result[0]):
        raise FhirPathError(
            f"item '{item.link_id}': calculatedExpression must give one number, got {result!r}"
        )
    number = to_decimal(result[0])
    if item.type == "integer":
        if number != number.to_integral_value():
            raise FhirPathError(f"item '{item.link_id}' is an integer but scored {number}")
        return int(number)
    return number


def _variables(
    items: list[ItemDef], *, work: Mapping[str, Any], definitions: Mapping[str, Any]
) -> dict[str, Any]:
    """SDC ``variable``s in scope, outermost first; each may use the ones before it."""
    scope: dict[str, Any] = {}
    for element in [definitions, *(i.data for i in items)]:
        for ext in extensions(element, VARIABLE_EXT):
            expr = ext.get("valueExpression")
            if not isinstance(expr, Mapping) or expr.get("language") != FHIRPATH_LANGUAGE:
                raise FhirPathError("variables must be text/fhirpath valueExpressions")
            name, text = expr.get("name"), expr.get("expression")
            if not isinstance(name, str) or not isinstance(text, str):
                raise FhirPathError("a variable needs a name and an expression")
            scope[name] = evaluate(text, work, questionnaire=definitions, variables=scope)
    return scope


def _write(work: dict[str, Any], item: ItemDef, *, value: Number | None) -> None:
    """Put the computed value into the working response so other expressions can use it.
    Calculated items never sit in repeating groups (``check_questionnaire``), so the first
    instance of each enclosing group is the one."""
    container = work
    for level in [*item.ancestors(), item]:
        items = container.setdefault("item", [])
        found = next(
            (i for i in items if isinstance(i, dict) and i.get("linkId") == level.link_id), None
        )
        if found is None:
            found = {"linkId": level.link_id}
            items.append(found)
        container = found
    if value is None:
        container.pop("answer", None)
    else:
        key = "valueInteger" if item.type == "integer" else "valueDecimal"
        container["answer"] = [{key: _json_number(value)}]


def _json_number(value: Number) -> int | float:
    if isinstance(value, int):
        return value
    return int(value) if value == value.to_integral_value() else float(value)


def _same_number(client: Any, computed: Number | None) -> bool:
    if computed is None or not is_number(client):
        return client is None and computed is None
    return to_decimal(client) == to_decimal(computed)


def _score(item: ItemDef, value: Number | None, *, sex: str | None) -> Score:
    bands, _problems = parse_bands(item)  # malformed bands are refused by check_questionnaire
    role_ext = extension(item.data, SCORE_ROLE_EXT)
    role: ScoreRole = (
        "subscore" if role_ext and role_ext.get("valueCode") == "subscore" else "total"
    )
    group = next((a for a in reversed(item.ancestors()) if a.type == "group"), None)
    return Score(
        link_id=item.link_id,
        text=item.text,
        codes=tuple(c for c in (Coding.from_fhir(raw) for raw in item.codes) if c is not None),
        role=role,
        value=value,
        band=select_band(bands, value, sex=sex),
        group_link_id=group.link_id if group else None,
        group_text=group.text if group else None,
    )
