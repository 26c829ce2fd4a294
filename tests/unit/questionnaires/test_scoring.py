"""score_response on small hand-made Questionnaires: weights, calculatedExpression evaluation,
variables, dependencies between scores, client totals and failure modes."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from service.errors import BusinessRuleError
from service.questionnaires.scoring import score_response
from service.questionnaires.urls import (
    CALCULATED_EXPRESSION_EXT,
    ITEM_WEIGHT_EXT,
    ORDINAL_VALUE_EXT,
    SCORE_BAND_EXT,
    SCORE_ROLE_EXT,
    VARIABLE_EXT,
)

S = "http://example.org/codes"


def calc(expression: str) -> dict[str, Any]:
    return {
        "url": CALCULATED_EXPRESSION_EXT,
        "valueExpression": {"language": "text/fhirpath", "expression": expression},
    }


def weighted(code: str, weight: float, url: str = ORDINAL_VALUE_EXT) -> dict[str, Any]:
    return {
        "extension": [{"url": url, "valueDecimal": weight}],
        "valueCoding": {"system": S, "code": code},
    }


def score_item(
    link_id: str, expression: str, *extra: dict[str, Any], type_: str = "integer"
) -> dict[str, Any]:
    return {
        "extension": [calc(expression), *extra],
        "linkId": link_id,
        "type": type_,
        "readOnly": True,
    }


def band(code: str, low: int | None, high: int | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "code", "valueCoding": {"system": S, "code": code}}]
    if low is not None:
        parts.append({"url": "low", "valueInteger": low})
    if high is not None:
        parts.append({"url": "high", "valueInteger": high})
    return {"url": SCORE_BAND_EXT, "extension": parts}


def questionnaire(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "url": "http://example.org/Questionnaire/q",
        "version": "3",
        "status": "active",
        **fields,
        "item": list(items),
    }


def response(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "QuestionnaireResponse", "status": "completed", "item": list(items)}


def coded(link_id: str, code: str, **coding: Any) -> dict[str, Any]:
    return {"linkId": link_id, "answer": [{"valueCoding": {"system": S, "code": code, **coding}}]}


CHOICE = {
    "linkId": "a",
    "type": "choice",
    "answerOption": [weighted("low", 1), weighted("high", 3)],
}
TOTAL = score_item(
    "total",
    "%resource.item.where(linkId='a').answer.value.weight().aggregate($this + $total, 0)",
    band("lo", 0, 1),
    band("hi", 2, None),
)


def test_weight_from_answer_option_and_band():
    result = score_response(questionnaire(CHOICE, TOTAL), response(coded("a", "high")))
    assert result.questionnaire == "http://example.org/Questionnaire/q|3"
    assert result.total is not None
    assert result.total.value == 3
    assert result.total.band is not None
    assert result.total.band.code.code == "hi"
    assert result.mismatches == ()


def test_client_weights_are_ignored():
    sent = coded("a", "low", extension=[{"url": ORDINAL_VALUE_EXT, "valueDecimal": 100}])
    result = score_response(questionnaire(CHOICE, TOTAL), response(sent))
    assert result.total is not None
    assert result.total.value == 1


def test_client_total_that_differs_is_noted_and_ours_is_used():
    sent = {"linkId": "total", "answer": [{"valueInteger": 9}]}
    result = score_response(questionnaire(CHOICE, TOTAL), response(coded("a", "low"), sent))
    assert result.total is not None
    assert result.total.value == 1
    assert [(m.link_id, m.client_value, m.computed_value) for m in result.mismatches] == [
        ("total", 9, 1)
    ]


def test_client_total_that_agrees_is_not_a_mismatch():
    sent = {"linkId": "total", "answer": [{"valueInteger": 3}]}
    result = score_response(questionnaire(CHOICE, TOTAL), response(coded("a", "high"), sent))
    assert result.mismatches == ()


def test_client_total_without_anything_to_score_is_a_mismatch():
    expression = "%resource.item.where(linkId='a').answer.value.weight()"
    q = questionnaire(CHOICE, score_item("total", expression))
    result = score_response(q, response({"linkId": "total", "answer": [{"valueInteger": 2}]}))
    assert result.total is not None
    assert result.total.value is None
    assert [(m.client_value, m.computed_value) for m in result.mismatches] == [(2, None)]


def test_item_weight_extension_and_builtin_value_set_weights():
    q = questionnaire(
        {"linkId": "a", "type": "choice", "answerOption": [weighted("x", 2, ITEM_WEIGHT_EXT)]},
        {
            "linkId": "b",
            "type": "choice",
            "answerValueSet": "https://handoff.dev/fhir/ValueSet/yes-no",
        },
        score_item(
            "total",
            "%resource.item.where(linkId in ('a' | 'b')).answer.value.ordinal().sum()",
        ),
    )
    answers = response(
        coded("a", "x"),
        {
            "linkId": "b",
            "answer": [{"valueCoding": {"system": "http://loinc.org", "code": "LA33-6"}}],
        },
    )
    result = score_response(q, answers)
    assert result.total is not None
    assert result.total.value == 3  # 2 (itemWeight) + 1 (yes-no ValueSet weight of Yes)


def test_total_may_depend_on_subscores_declared_after_it():
    q = questionnaire(
        score_item("total", "%resource.item.where(linkId in ('s1' | 's2')).answer.value.sum()"),
        {"linkId": "n", "type": "integer"},
        score_item(
            "s1",
            "%resource.item.where(linkId='n').answer.value * 2",
            {"url": SCORE_ROLE_EXT, "valueCode": "subscore"},
        ),
        score_item(
            "s2",
            "%resource.item.where(linkId='s1').answer.value + 1",
            {"url": SCORE_ROLE_EXT, "valueCode": "subscore"},
        ),
    )
    result = score_response(q, response({"linkId": "n", "answer": [{"valueInteger": 5}]}))
    # s1 = 5 * 2 = 10; s2 = s1 + 1 = 11; total = 10 + 11 = 21
    assert [(s.link_id, s.role, s.value) for s in result.scores] == [
        ("total", "total", 21),
        ("s1", "subscore", 10),
        ("s2", "subscore", 11),
    ]
    assert [s.link_id for s in result.subscores] == ["s1", "s2"]


def test_variables_at_questionnaire_and_item_level():
    variable = {
        "url": VARIABLE_EXT,
        "valueExpression": {
            "name": "n",
            "language": "text/fhirpath",
            "expression": "%resource.item.where(linkId='n').answer.value",
        },
    }
    item_variable = {
        "url": VARIABLE_EXT,
        "valueExpression": {"name": "twice", "language": "text/fhirpath", "expression": "%n * 2"},
    }
    q = questionnaire(
        {"linkId": "n", "type": "integer"},
        score_item("total", "%twice + 1", item_variable),
        extension=[variable],
    )
    result = score_response(q, response({"linkId": "n", "answer": [{"valueInteger": 4}]}))
    assert result.total is not None
    assert result.total.value == 9


def test_decimal_score():
    q = questionnaire(
        {"linkId": "d", "type": "decimal"},
        score_item("total", "%resource.item.where(linkId='d').answer.value / 4", type_="decimal"),
    )
    result = score_response(q, response({"linkId": "d", "answer": [{"valueDecimal": 3}]}))
    assert result.total is not None
    assert result.total.value == Decimal("0.75")


def test_calculated_items_in_a_disabled_group_still_score():
    q = questionnaire(
        {"linkId": "gate", "type": "boolean"},
        {
            "linkId": "g",
            "type": "group",
            "enableWhen": [{"question": "gate", "operator": "=", "answerBoolean": True}],
            "item": [
                {"linkId": "g1", "type": "boolean"},
                score_item(
                    "g-score",
                    "%resource.item.where(linkId='g').item.answer.where(value = true).count()",
                ),
            ],
        },
    )
    answers = response(
        {"linkId": "gate", "answer": [{"valueBoolean": False}]},
        {"linkId": "g", "item": [{"linkId": "g1", "answer": [{"valueBoolean": True}]}]},
    )
    result = score_response(q, answers)
    # g is disabled, so g1's "yes" is dropped and the score is 0 rather than missing
    assert result.score("g-score").value == 0
    assert result.score("g-score").group_link_id == "g"


def test_value_outside_every_band_has_no_band():
    q = questionnaire(
        CHOICE,
        score_item(
            "total",
            "%resource.item.where(linkId='a').answer.value.weight().aggregate($this + $total, 0)",
            band("only-zero", 0, 0),
        ),
    )
    result = score_response(q, response(coded("a", "high")))
    assert result.total is not None
    assert (result.total.value, result.total.band) == (3, None)
    assert result.bands == ()


def test_inputs_are_not_mutated():
    q = questionnaire(CHOICE, TOTAL)
    r = response(coded("a", "high"), {"linkId": "total", "answer": [{"valueInteger": 1}]})
    q_before, r_before = copy.deepcopy(q), copy.deepcopy(r)
    score_response(q, r)
    assert (q, r) == (q_before, r_before)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("%resource.item.nosuchfunction()", "Not implemented"),
        ("'three'", "must give one number"),
        ("(1 | 2)", "must give one number"),
        ("1.5", "is an integer but scored 1.5"),
        ("%undefined + 1", "undefined"),
    ],
)
def test_broken_definitions_raise_business_rule_error(expression, message):
    q = questionnaire(score_item("total", expression))
    with pytest.raises(BusinessRuleError) as raised:
        score_response(q, response())
    assert message in raised.value.diagnostics
    assert raised.value.issues[0].code == "processing"
    assert raised.value.status == 422


def test_circular_calculations_that_never_settle_raise():
    q = questionnaire(
        score_item("a", "%resource.item.where(linkId='b').answer.value.sum() + 1"),
        score_item("b", "%resource.item.where(linkId='a').answer.value.sum() + 1"),
    )
    with pytest.raises(BusinessRuleError, match="never settle"):
        score_response(q, response())


def test_circular_calculations_over_nothing_settle_empty():
    q = questionnaire(
        score_item("a", "%resource.item.where(linkId='b').answer.value + 1"),
        score_item("b", "%resource.item.where(linkId='a').answer.value + 1"),
    )
    assert [s.value for s in score_response(q, response()).scores] == [None, None]
