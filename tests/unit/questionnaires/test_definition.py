"""Answer sets: which ValueSets the engine can enumerate, and their weights."""

from __future__ import annotations

from typing import Any

import pytest

from service.questionnaires.definition import QuestionnaireIndex, expand
from service.questionnaires.urls import ITEM_WEIGHT_EXT, ORDINAL_VALUE_EXT, OVERDOSE_RISK_FACTOR_CS

S = "http://example.org/codes"


def test_expansion_is_preferred_and_abstract_entries_are_skipped():
    value_set = {
        "resourceType": "ValueSet",
        "compose": {
            "include": [{"system": S, "filter": [{"property": "x", "op": "=", "value": "y"}]}]
        },
        "expansion": {
            "contains": [
                {
                    "abstract": True,
                    "code": "header",
                    "system": S,
                    "contains": [
                        {
                            "extension": [{"url": ITEM_WEIGHT_EXT, "valueInteger": 2}],
                            "system": S,
                            "code": "leaf",
                            "display": "Leaf",
                        }
                    ],
                }
            ]
        },
    }
    assert expand(value_set) == [({"system": S, "code": "leaf", "display": "Leaf"}, 2)]


@pytest.mark.parametrize(
    "compose",
    [
        {"include": [{"system": S, "filter": [{"property": "a", "op": "=", "value": "b"}]}]},
        {"include": [{"valueSet": ["http://example.org/vs"]}]},
        {"include": [{"system": S, "concept": [{"code": "a"}]}], "exclude": [{"system": S}]},
        {"include": [{"system": "http://unknown.example/cs"}]},  # whole system we do not ship
        {"include": [{"concept": [{"code": "a"}]}]},  # no system
    ],
)
def test_non_enumerable_value_sets(compose):
    assert expand({"resourceType": "ValueSet", "compose": compose}) is None


def test_whole_builtin_code_system_includes_child_concepts():
    codings = expand({"compose": {"include": [{"system": OVERDOSE_RISK_FACTOR_CS}]}}) or []
    codes = [c["code"] for c, _w in codings]
    assert "not-on-moud" in codes
    assert "opioid-use-not-on-moud" in codes  # a child concept


def test_contained_value_set_with_concept_weights():
    questionnaire: dict[str, Any] = {
        "resourceType": "Questionnaire",
        "contained": [
            {
                "resourceType": "ValueSet",
                "id": "w",
                "compose": {
                    "include": [
                        {
                            "system": S,
                            "concept": [
                                {
                                    "extension": [{"url": ORDINAL_VALUE_EXT, "valueDecimal": 0.5}],
                                    "code": "half",
                                }
                            ],
                        }
                    ]
                },
            }
        ],
        "item": [
            {"linkId": "a", "type": "choice", "answerValueSet": "#w"},
            {"linkId": "b", "type": "choice", "answerValueSet": "#missing"},
            {
                "linkId": "c",
                "type": "choice",
                "answerValueSet": "https://handoff.dev/fhir/ValueSet/yes-no|9.9.9",  # wrong version
            },
        ],
    }
    index = QuestionnaireIndex(questionnaire)
    [option] = index.options(index.by_link_id["a"]).options
    assert (option.code, str(option.weight)) == ("half", "0.5")
    assert index.options(index.by_link_id["b"]).resolved is False
    assert index.options(index.by_link_id["c"]).resolved is False
