"""check_questionnaire: what a site-loaded Questionnaire must satisfy."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.questionnaires.check import check_questionnaire
from service.questionnaires.urls import (
    CALCULATED_EXPRESSION_EXT,
    SCORE_BAND_EXT,
    SCORE_ROLE_EXT,
    TRIAGE_RULE_EXT,
    VARIABLE_EXT,
)


def calc(expression: str, language: str = "text/fhirpath") -> dict[str, Any]:
    return {
        "url": CALCULATED_EXPRESSION_EXT,
        "valueExpression": {"language": language, "expression": expression},
    }


def base(*items: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "url": "http://example.org/Questionnaire/q",
        "version": "1",
        "status": "active",
        "item": list(items)
        or [{"linkId": "a", "type": "choice", "answerOption": [{"valueCoding": {"code": "x"}}]}],
    }


def test_builtins_and_the_site_example_pass(instruments, tcuds5):
    for questionnaire in [*instruments.values(), tcuds5]:
        assert check_questionnaire(questionnaire) == [], questionnaire["url"]


def test_minimal_questionnaire_passes():
    assert check_questionnaire(base()) == []


def messages(questionnaire: dict[str, Any]) -> list[str]:
    return [i.diagnostics for i in check_questionnaire(questionnaire)]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda q: q.pop("url"), "Questionnaire.url is required"),
        (lambda q: q.pop("version"), "Questionnaire.version is required"),
        (lambda q: q.update(status="published"), "status must be one of"),
        (lambda q: q.update(resourceType="Patient"), "resourceType must be Questionnaire"),
    ],
)
def test_resource_level_problems(change, fragment):
    questionnaire = base()
    change(questionnaire)
    assert any(fragment in m for m in messages(questionnaire))


SCORE_OK = {"linkId": "s", "type": "integer", "extension": [calc("1")]}


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        (
            [{"linkId": "a", "type": "string"}, {"linkId": "a", "type": "string"}],
            "used more than once",
        ),
        ([{"linkId": "a", "type": "essay"}], "unknown type 'essay'"),
        ([{"linkId": "g", "type": "group"}], "has no items"),
        ([{"linkId": "d", "type": "display", "required": True}], "cannot be required"),
        ([{"linkId": "c", "type": "choice"}], "has no answer options"),
        (
            [{"linkId": "s", "type": "string", "answerOption": [{"valueString": "x"}]}],
            "only choice items",
        ),
        (
            [{"linkId": "c", "type": "choice", "answerValueSet": "http://x.org/vs"}],
            "must be contained",
        ),
        (
            [
                {
                    "linkId": "c",
                    "type": "choice",
                    "answerValueSet": "#vs",
                    "answerOption": [{"valueString": "x"}],
                }
            ],
            "both answerOption and answerValueSet",
        ),
        (
            [
                {
                    "linkId": "a",
                    "type": "string",
                    "enableWhen": [{"question": "zz", "operator": "exists", "answerBoolean": True}],
                }
            ],
            "unknown question 'zz'",
        ),
        (
            [
                {"linkId": "b", "type": "boolean"},
                {
                    "linkId": "a",
                    "type": "string",
                    "enableWhen": [{"question": "b", "operator": "~", "answerBoolean": True}],
                },
            ],
            "unknown enableWhen operator",
        ),
        (
            [
                {"linkId": "b", "type": "boolean"},
                {
                    "linkId": "a",
                    "type": "string",
                    "enableWhen": [{"question": "b", "operator": "=", "answerString": "yes"}],
                },
            ],
            "compares boolean question 'b' with answerString",
        ),
        (
            [
                {"linkId": "b", "type": "boolean"},
                {
                    "linkId": "a",
                    "type": "string",
                    "enableWhen": [{"question": "b", "operator": "exists", "answerString": "x"}],
                },
            ],
            "'exists' needs answerBoolean",
        ),
        (
            [
                {"linkId": "b", "type": "boolean"},
                {
                    "linkId": "a",
                    "type": "string",
                    "enableWhen": [
                        {"question": "b", "operator": "exists", "answerBoolean": True},
                        {"question": "b", "operator": "=", "answerBoolean": True},
                    ],
                },
            ],
            "needs enableBehavior",
        ),
        (
            [
                {
                    "linkId": "a",
                    "type": "boolean",
                    "enableWhen": [{"question": "b", "operator": "exists", "answerBoolean": True}],
                },
                {
                    "linkId": "b",
                    "type": "boolean",
                    "enableWhen": [{"question": "a", "operator": "exists", "answerBoolean": True}],
                },
            ],
            "enableWhen conditions loop",
        ),
        (
            [
                {
                    "extension": [
                        {
                            "url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-enableWhenExpression",
                            "valueExpression": {"language": "text/fhirpath", "expression": "true"},
                        }
                    ],
                    "linkId": "a",
                    "type": "string",
                }
            ],
            "uses sdc-questionnaire-enableWhenExpression",
        ),
        ([{"linkId": "s", "type": "integer", "extension": [calc("1 +")]}], "syntax error"),
        (
            [{"linkId": "s", "type": "integer", "extension": [calc("1", "text/cql")]}],
            "must be text/fhirpath",
        ),
        (
            [{"linkId": "s", "type": "string", "extension": [calc("'a'")]}],
            "must be integer or decimal",
        ),
        (
            [{"linkId": "g", "type": "group", "repeats": True, "item": [SCORE_OK]}],
            "may not sit in a repeating group",
        ),
        (
            [{**SCORE_OK, "extension": [calc("1"), {"url": SCORE_ROLE_EXT, "valueCode": "grand"}]}],
            "must be total or subscore",
        ),
        (
            [
                {
                    **SCORE_OK,
                    "extension": [
                        calc("1"),
                        {
                            "url": SCORE_BAND_EXT,
                            "extension": [
                                {"url": "code", "valueCoding": {"code": "a"}},
                                {"url": "low", "valueInteger": 0},
                                {"url": "high", "valueInteger": 5},
                            ],
                        },
                        {
                            "url": SCORE_BAND_EXT,
                            "extension": [
                                {"url": "code", "valueCoding": {"code": "b"}},
                                {"url": "low", "valueInteger": 5},
                            ],
                        },
                    ],
                }
            ],
            "bands 'a' and 'b' overlap",
        ),
        (
            [
                {
                    **SCORE_OK,
                    "extension": [
                        calc("1"),
                        {"url": SCORE_BAND_EXT, "extension": [{"url": "low", "valueInteger": 0}]},
                    ],
                }
            ],
            "has no code",
        ),
        (
            [
                {
                    **SCORE_OK,
                    "extension": [
                        calc("1"),
                        {
                            "url": SCORE_BAND_EXT,
                            "extension": [
                                {"url": "code", "valueCoding": {"code": "a"}},
                                {"url": "low", "valueString": "0"},
                            ],
                        },
                    ],
                }
            ],
            "must be valueInteger or valueDecimal",
        ),
        (
            [
                {
                    **SCORE_OK,
                    "extension": [
                        calc("1"),
                        {
                            "url": SCORE_BAND_EXT,
                            "extension": [
                                {"url": "code", "valueCoding": {"code": "a"}},
                                {"url": "sex", "valueCode": "m"},
                            ],
                        },
                    ],
                }
            ],
            "sex must be one of",
        ),
        (
            [
                {
                    "linkId": "x",
                    "type": "integer",
                    "extension": [{"url": SCORE_ROLE_EXT, "valueCode": "total"}],
                }
            ],
            "need a calculatedExpression",
        ),
        # only found by the dry run
        (
            [{"linkId": "s", "type": "integer", "extension": [calc("%resource.item.nosuch()")]}],
            "Not implemented",
        ),
    ],
)
def test_item_problems(items, fragment):
    found = messages(base(*items))
    assert any(fragment in m for m in found), found


def test_variable_problems():
    questionnaire = base()
    questionnaire["extension"] = [
        {
            "url": VARIABLE_EXT,
            "valueExpression": {"name": "v", "language": "text/fhirpath", "expression": "(("},
        },
        {
            "url": VARIABLE_EXT,
            "valueExpression": {
                "name": "w",
                "language": "application/x-fhir-query",
                "expression": "x",
            },
        },
    ]
    found = messages(questionnaire)
    assert any("variable 'v': syntax error" in m for m in found)
    assert any("variables must be text/fhirpath" in m for m in found)


def test_triage_rule_problems(instruments):
    questionnaire = copy.deepcopy(instruments["overdose-risk"])
    rule = next(e for e in questionnaire["extension"] if e["url"] == TRIAGE_RULE_EXT)
    rule["extension"] = [p for p in rule["extension"] if p["url"] != "version"]
    rule["extension"][-1]["extension"][1]["valueExpression"]["expression"] = "true and"
    found = messages(questionnaire)
    assert any("needs a 'version'" in m for m in found)
    assert any("triage condition 5: syntax error" in m for m in found)


def test_all_problems_are_reported_together():
    found = check_questionnaire(
        base(
            {"linkId": "a", "type": "essay"},
            {"linkId": "g", "type": "group"},
            {"linkId": "c", "type": "choice"},
        )
    )
    assert len(found) == 3
    assert [i.expression[0] for i in found] == [
        "Questionnaire.item.where(linkId='a')",
        "Questionnaire.item.where(linkId='g')",
        "Questionnaire.item.where(linkId='c')",
    ]
