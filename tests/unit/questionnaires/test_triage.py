"""Triage rule definitions: what a malformed rule reports, and non-boolean conditions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.errors import BusinessRuleError
from service.questionnaires.scoring import score_response
from service.questionnaires.triage import parse_triage_rule
from service.questionnaires.urls import TRIAGE_RULE_EXT

C = {"system": "http://example.org/c", "code": "x"}


def rule(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "extension": [{"url": TRIAGE_RULE_EXT, "extension": list(parts)}],
    }


GOOD = [
    {"url": "version", "valueString": "1"},
    {"url": "code", "valueCoding": C},
    {"url": "positive", "valueCoding": C},
    {"url": "negative", "valueCoding": C},
    {
        "url": "condition",
        "extension": [
            {"url": "factor", "valueCoding": C},
            {
                "url": "expression",
                "valueExpression": {"language": "text/fhirpath", "expression": "true"},
            },
        ],
    },
]


def test_well_formed_rule_parses():
    parsed, problems = parse_triage_rule(rule(*GOOD))
    assert problems == []
    assert parsed is not None
    assert [c.expression for c in parsed.conditions] == ["true"]


def test_no_rule():
    assert parse_triage_rule({"resourceType": "Questionnaire"}) == (None, [])


@pytest.mark.parametrize(
    ("parts", "fragment"),
    [
        ([p for p in GOOD if p["url"] != "positive"], "needs 'positive'"),
        ([p for p in GOOD if p["url"] != "condition"], "at least one 'condition'"),
        (
            [*GOOD[:4], {"url": "condition", "extension": [GOOD[4]["extension"][1]]}],
            "needs 'factor'",
        ),
        (
            [
                *GOOD[:4],
                {
                    "url": "condition",
                    "extension": [
                        {"url": "factor", "valueCoding": C},
                        {
                            "url": "expression",
                            "valueExpression": {"language": "text/cql", "expression": "true"},
                        },
                    ],
                },
            ],
            "needs a text/fhirpath 'expression'",
        ),
    ],
)
def test_malformed_rules(parts, fragment):
    parsed, problems = parse_triage_rule(rule(*parts))
    assert parsed is None
    assert any(fragment in p for p in problems), problems


def test_condition_must_give_a_boolean():
    parts = copy.deepcopy(GOOD)
    parts[4]["extension"][1]["valueExpression"]["expression"] = "1"
    questionnaire = {**rule(*parts), "url": "http://example.org/q", "version": "1", "item": []}
    with pytest.raises(BusinessRuleError, match="must give a boolean"):
        score_response(
            questionnaire, {"resourceType": "QuestionnaireResponse", "status": "completed"}
        )
