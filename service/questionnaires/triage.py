"""A transparent, versioned "flag if any condition holds" triage rule, carried as data on the
Questionnaire (our ``triage-rule`` extension) rather than as code per instrument.

    {"url": TRIAGE_RULE_EXT, "extension": [
        {"url": "name", "valueString": "Post-release overdose triage"},
        {"url": "version", "valueString": "1.0.0"},
        {"url": "code", "valueCoding": {...}},       # Observation.code of the outcome
        {"url": "positive", "valueCoding": {...}},   # result when any condition holds
        {"url": "negative", "valueCoding": {...}},   # result when none holds
        {"url": "condition", "extension": [          # one or more, evaluated in order
            {"url": "factor", "valueCoding": {...}}, # recorded when the condition holds
            {"url": "expression", "valueExpression": {
                "language": "text/fhirpath", "expression": "..."}}]}]}

A condition holds when its FHIRPath gives exactly ``true``; empty (unanswered) counts as false,
so conditions meant to flag missing information must say so (e.g. ``.where(value = true)
.empty()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.questionnaires.definition import extension
from service.questionnaires.fhirpath import FhirPathError, evaluate, syntax_problem
from service.questionnaires.result import Coding, TriageResult
from service.questionnaires.urls import FHIRPATH_LANGUAGE, TRIAGE_RULE_EXT


@dataclass(frozen=True)
class TriageCondition:
    factor: Coding
    expression: str


@dataclass(frozen=True)
class TriageRule:
    version: str
    code: Coding
    positive: Coding
    negative: Coding
    conditions: tuple[TriageCondition, ...]
    name: str | None = None


def parse_triage_rule(questionnaire: Mapping[str, Any]) -> tuple[TriageRule | None, list[str]]:
    """The Questionnaire's rule (None when it has none or it is malformed) and its problems."""
    ext = extension(questionnaire, TRIAGE_RULE_EXT)
    if ext is None:
        return None, []
    parts = [p for p in ext.get("extension") or [] if isinstance(p, Mapping)]
    single = {p.get("url"): p for p in parts}
    problems: list[str] = []
    version = single.get("version", {}).get("valueString")
    name = single.get("name", {}).get("valueString")
    if not isinstance(version, str) or not version:
        problems.append("triage rule needs a 'version' (valueString)")
    codings = {}
    for key in ("code", "positive", "negative"):
        codings[key] = Coding.from_fhir(single.get(key, {}).get("valueCoding"))
        if codings[key] is None:
            problems.append(f"triage rule needs '{key}' (valueCoding with a code)")
    conditions = []
    for n, part in enumerate(p for p in parts if p.get("url") == "condition"):
        sub = {s.get("url"): s for s in part.get("extension") or [] if isinstance(s, Mapping)}
        factor = Coding.from_fhir(sub.get("factor", {}).get("valueCoding"))
        expr = sub.get("expression", {}).get("valueExpression")
        text = expr.get("expression") if isinstance(expr, Mapping) else None
        if factor is None:
            problems.append(f"triage condition {n + 1} needs 'factor' (valueCoding)")
        if (
            not isinstance(expr, Mapping)
            or expr.get("language") != FHIRPATH_LANGUAGE
            or not isinstance(text, str)
            or not text
        ):
            problems.append(f"triage condition {n + 1} needs a text/fhirpath 'expression'")
            continue
        syntax = syntax_problem(text)
        if syntax is not None:
            problems.append(f"triage condition {n + 1}: {syntax}")
        elif factor is not None:
            conditions.append(TriageCondition(factor, text))
    if not conditions and not problems:
        problems.append("triage rule needs at least one 'condition'")
    if problems:
        return None, problems
    code, positive, negative = codings["code"], codings["positive"], codings["negative"]
    assert code is not None and positive is not None and negative is not None
    return (
        TriageRule(str(version), code, positive, negative, tuple(conditions), name),
        [],
    )


def apply_triage_rule(
    rule: TriageRule,
    response: Mapping[str, Any],
    *,
    questionnaire: Mapping[str, Any],
    variables: Mapping[str, Any] | None = None,
) -> TriageResult:
    """Evaluate every condition (all of them, so the record lists every triggering factor)."""
    factors = []
    for condition in rule.conditions:
        result = evaluate(
            condition.expression, response, questionnaire=questionnaire, variables=variables
        )
        # 1 == True in Python, so check the type, not just the value
        if len(result) > 1 or (result and not isinstance(result[0], bool)):
            raise FhirPathError(
                f"triage condition for '{condition.factor.code}' must give a boolean"
            )
        if result == [True]:
            factors.append(condition.factor)
    flagged = bool(factors)
    return TriageResult(
        rule_version=rule.version,
        code=rule.code,
        result=rule.positive if flagged else rule.negative,
        flagged=flagged,
        factors=tuple(factors),
        rule_name=rule.name,
    )
