"""Check that a Questionnaire (e.g. one a site POSTs) is something this service can process:
R4 item rules we rely on, resolvable answer sets, well-formed scoring extensions, FHIRPath that
parses and runs. Every problem is reported at once, with expressions like
``Questionnaire.item.where(linkId='g').item.where(linkId='x')``.

Deliberate limits: calculated (score) items must be integer or decimal and may not sit in a
repeating group or under a question; SDC expression-based enableWhen/answer lists are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from service.errors import BusinessRuleError, Issue
from service.questionnaires.bands import parse_bands
from service.questionnaires.definition import ItemDef, QuestionnaireIndex, extension, extensions
from service.questionnaires.enablement import OPERATORS
from service.questionnaires.fhirpath import syntax_problem
from service.questionnaires.scoring import score_response
from service.questionnaires.tree import QUESTIONNAIRE_ROOT, item_step
from service.questionnaires.triage import parse_triage_rule
from service.questionnaires.urls import (
    CALCULATED_EXPRESSION_EXT,
    FHIRPATH_LANGUAGE,
    SCORE_BAND_EXT,
    SCORE_ROLE_EXT,
    UNSUPPORTED_EXTS,
    VARIABLE_EXT,
)
from service.questionnaires.values import ITEM_TYPES, KINDS_BY_ITEM_TYPE, typed_values

QUESTIONNAIRE_STATUSES = frozenset({"draft", "active", "retired", "unknown"})

#: ``error(code, message, expression)`` appends one Issue.
Report = Callable[..., None]


def check_questionnaire(questionnaire: Mapping[str, Any]) -> list[Issue]:
    """Every reason this service cannot use the Questionnaire; empty when it can."""
    issues: list[Issue] = []

    def error(code: str, message: str, expression: str = QUESTIONNAIRE_ROOT) -> None:
        issues.append(Issue("error", code, message, (expression,)))

    if questionnaire.get("resourceType") != "Questionnaire":
        error("structure", "resourceType must be Questionnaire", "resourceType")
        return issues
    for key in ("url", "version"):
        if not isinstance(questionnaire.get(key), str) or not questionnaire[key]:
            error(
                "required",
                f"Questionnaire.{key} is required: responses and scores cite url|version",
                f"{QUESTIONNAIRE_ROOT}.{key}",
            )
    if questionnaire.get("status") not in QUESTIONNAIRE_STATUSES:
        error(
            "value",
            f"status must be one of {', '.join(sorted(QUESTIONNAIRE_STATUSES))}",
            f"{QUESTIONNAIRE_ROOT}.status",
        )
    _check_expressions_of(questionnaire, path=QUESTIONNAIRE_ROOT, error=error)

    index = QuestionnaireIndex(questionnaire)
    for link_id in sorted(set(index.duplicates)):
        error("invariant", f"linkId '{link_id}' is used more than once")
    for item in index.walk():
        _check_item(index, item, error=error)
    _check_cycles(index, error)

    _rule, problems = parse_triage_rule(questionnaire)
    for problem in problems:
        error("invariant", problem, f"{QUESTIONNAIRE_ROOT}.extension")

    if not issues:
        # a dry run catches what only shows at evaluation (unknown functions, bad variables)
        try:
            score_response(
                questionnaire, {"resourceType": "QuestionnaireResponse", "status": "in-progress"}
            )
        except BusinessRuleError as exc:
            issues.extend(exc.issues)
    return issues


def _path(item: ItemDef) -> str:
    return QUESTIONNAIRE_ROOT + "".join(item_step(i.link_id) for i in [*item.ancestors(), item])


def _check_item(index: QuestionnaireIndex, item: ItemDef, *, error: Report) -> None:
    path = _path(item)
    link_id = item.link_id
    if not link_id:
        error("required", "every item needs a linkId", path)
    if item.type not in ITEM_TYPES:
        error("value", f"item '{link_id}' has unknown type '{item.type}'", path)
        return
    for url in UNSUPPORTED_EXTS:
        if extension(item.data, url) is not None:
            error("not-supported", f"item '{link_id}' uses {url.rsplit('/', 1)[-1]}", path)
    if item.type == "group" and not item.children:
        error("invariant", f"group '{link_id}' has no items", path)
    if item.type == "display":
        if item.children:
            error("invariant", f"display item '{link_id}' cannot contain items", path)
        if item.required or item.repeats:
            error("invariant", f"display item '{link_id}' cannot be required or repeat", path)
    has_options = "answerOption" in item.data
    has_value_set = "answerValueSet" in item.data
    if (has_options or has_value_set) and item.type not in ("choice", "open-choice"):
        error("invariant", f"only choice items may have answer options ('{link_id}')", path)
    if has_options and has_value_set:
        error("invariant", f"item '{link_id}' has both answerOption and answerValueSet", path)
    if item.type in ("choice", "open-choice"):
        options = index.options(item)
        if not options.resolved:
            error(
                "not-supported",
                f"answerValueSet '{options.source}' of '{link_id}' must be contained "
                "(#id) or one of the built-in ValueSets",
                path,
            )
        elif not options.options and item.type == "choice":
            error("invariant", f"choice item '{link_id}' has no answer options", path)
    _check_enable_when(index, item, path=path, error=error)
    _check_expressions_of(item.data, path=path, error=error)
    if item.is_calculated:
        _check_calculated(item, path=path, error=error)
    elif extension(item.data, SCORE_ROLE_EXT) is not None or extensions(item.data, SCORE_BAND_EXT):
        error("invariant", f"score bands/role on '{link_id}' need a calculatedExpression", path)


def _check_enable_when(
    index: QuestionnaireIndex, item: ItemDef, *, path: str, error: Report
) -> None:
    conditions = item.data.get("enableWhen")
    if conditions is None:
        return
    if not isinstance(conditions, list):
        error("structure", f"enableWhen of '{item.link_id}' must be a list", path)
        return
    if len(conditions) > 1 and item.data.get("enableBehavior") not in ("all", "any"):
        error("invariant", f"item '{item.link_id}' needs enableBehavior all or any", path)
    for n, condition in enumerate(conditions):
        where = f"{path}.enableWhen[{n}]"
        if not isinstance(condition, Mapping):
            error("structure", "enableWhen entries must be objects", where)
            continue
        question = index.by_link_id.get(str(condition.get("question")))
        operator = condition.get("operator")
        answers = typed_values(condition, "answer")
        if question is None:
            error(
                "invariant",
                f"enableWhen of '{item.link_id}' names unknown question "
                f"'{condition.get('question')}'",
                where,
            )
            continue
        if operator not in OPERATORS:
            error("value", f"unknown enableWhen operator '{operator}'", where)
            continue
        if len(answers) != 1:
            error("invariant", "enableWhen needs exactly one answer[x]", where)
            continue
        kind = answers[0].kind
        if operator == "exists":
            if kind != "Boolean":
                error("invariant", "enableWhen 'exists' needs answerBoolean", where)
            continue
        allowed = KINDS_BY_ITEM_TYPE.get(question.type, frozenset())
        numeric = {"Integer", "Decimal"}
        if kind not in allowed and not (kind in numeric and allowed & numeric):
            error(
                "invariant",
                f"enableWhen of '{item.link_id}' compares {question.type} question "
                f"'{question.link_id}' with answer{kind}",
                where,
            )


def _check_expressions_of(element: Mapping[str, Any], *, path: str, error: Report) -> None:
    for ext in extensions(element, VARIABLE_EXT):
        expr = ext.get("valueExpression")
        if not isinstance(expr, Mapping) or expr.get("language") != FHIRPATH_LANGUAGE:
            error("not-supported", "variables must be text/fhirpath valueExpressions", path)
            continue
        if not isinstance(expr.get("name"), str) or not isinstance(expr.get("expression"), str):
            error("invariant", "a variable needs a name and an expression", path)
            continue
        problem = syntax_problem(expr["expression"])
        if problem is not None:
            error("invariant", f"variable '{expr['name']}': {problem}", path)


def _check_calculated(item: ItemDef, *, path: str, error: Report) -> None:
    link_id = item.link_id
    ext = extension(item.data, CALCULATED_EXPRESSION_EXT)
    expr = ext.get("valueExpression") if ext else None
    text = expr.get("expression") if isinstance(expr, Mapping) else None
    if not isinstance(expr, Mapping) or expr.get("language") != FHIRPATH_LANGUAGE:
        error("not-supported", f"calculatedExpression of '{link_id}' must be text/fhirpath", path)
    elif not isinstance(text, str) or not text:
        error("invariant", f"calculatedExpression of '{link_id}' is empty", path)
    else:
        problem = syntax_problem(text)
        if problem is not None:
            error("invariant", f"calculatedExpression of '{link_id}': {problem}", path)
    if item.type not in ("integer", "decimal"):
        error("not-supported", f"calculated item '{link_id}' must be integer or decimal", path)
    for ancestor in item.ancestors():
        if ancestor.type != "group" or ancestor.repeats:
            error(
                "not-supported",
                f"calculated item '{link_id}' may not sit in a repeating group or under a question",
                path,
            )
            break
    role = extension(item.data, SCORE_ROLE_EXT)
    if role is not None and role.get("valueCode") not in ("total", "subscore"):
        error("value", f"score-role of '{link_id}' must be total or subscore", path)
    _bands, problems = parse_bands(item)
    for problem in problems:
        error("invariant", f"score bands of '{link_id}': {problem}", path)


def _check_cycles(index: QuestionnaireIndex, error: Report) -> None:
    """enableWhen chains (including through parents) must not loop."""
    depends: dict[str, set[str]] = {}
    for item in index.walk():
        targets = {
            str(c.get("question"))
            for c in item.data.get("enableWhen") or []
            if isinstance(c, Mapping)
        }
        if item.parent is not None:
            targets.add(item.parent.link_id)
        depends[item.link_id] = targets
    state: dict[str, int] = {}

    def visit(link_id: str, trail: list[str]) -> None:
        if state.get(link_id) == 2:
            return
        if state.get(link_id) == 1:
            loop = [*trail[trail.index(link_id) :], link_id]
            error("invariant", f"enableWhen conditions loop: {' -> '.join(loop)}")
            return
        state[link_id] = 1
        for target in sorted(depends.get(link_id, ())):
            visit(target, [*trail, link_id])
        state[link_id] = 2

    for link_id in depends:
        visit(link_id, [])
