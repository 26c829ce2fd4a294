"""enableWhen: every operator and answer type, enableBehavior any/all, unanswered questions,
chains through disabled questions, and the nearest instance in repeating groups."""

from __future__ import annotations

from typing import Any

import pytest

from service.questionnaires.definition import QuestionnaireIndex
from service.questionnaires.enablement import Enablement
from service.questionnaires.tree import build_tree

S = "http://example.org/codes"


def enabled(
    source: dict[str, Any], condition: dict[str, Any], answers: list[dict[str, Any]]
) -> bool:
    questionnaire = {
        "resourceType": "Questionnaire",
        "item": [source, {"linkId": "dep", "type": "string", "enableWhen": [condition]}],
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "item": [{"linkId": source["linkId"], "answer": answers}] if answers else [],
    }
    index = QuestionnaireIndex(questionnaire)
    root = build_tree(index, response)
    return Enablement(index, root).is_enabled(index.by_link_id["dep"], root)


INTEGER = {"linkId": "n", "type": "integer"}


@pytest.mark.parametrize(
    ("operator", "value", "answer", "expected"),
    [
        ("=", 3, 3, True),
        ("=", 3, 4, False),
        ("!=", 3, 4, True),
        ("!=", 3, 3, False),
        (">", 3, 4, True),
        (">", 3, 3, False),
        ("<", 3, 2, True),
        ("<", 3, 3, False),
        (">=", 3, 3, True),
        (">=", 3, 2, False),
        ("<=", 3, 3, True),
        ("<=", 3, 4, False),
    ],
)
def test_integer_operators(operator, value, answer, expected):
    condition = {"question": "n", "operator": operator, "answerInteger": value}
    assert enabled(INTEGER, condition, [{"valueInteger": answer}]) is expected


@pytest.mark.parametrize(
    ("operator", "expected"),
    [("=", False), ("!=", True), (">", False), ("<", False), (">=", False), ("<=", False)],
)
def test_unanswered_question(operator, expected):
    # R4: "!=" holds when no answer equals the value, so also when there is no answer
    condition = {"question": "n", "operator": operator, "answerInteger": 3}
    assert enabled(INTEGER, condition, []) is expected


@pytest.mark.parametrize(
    ("wanted", "answers", "expected"),
    [
        (True, [{"valueInteger": 0}], True),
        (True, [], False),
        (False, [], True),
        (False, [{"valueInteger": 0}], False),
    ],
)
def test_exists(wanted, answers, expected):
    condition = {"question": "n", "operator": "exists", "answerBoolean": wanted}
    assert enabled(INTEGER, condition, answers) is expected


def test_any_of_several_answers_satisfies_equals():
    source = {"linkId": "m", "type": "choice", "repeats": True}
    condition = {"question": "m", "operator": "=", "answerCoding": {"system": S, "code": "b"}}
    answers = [
        {"valueCoding": {"system": S, "code": "a"}},
        {"valueCoding": {"system": S, "code": "b"}},
    ]
    assert enabled(source, condition, answers) is True
    not_equal = {**condition, "operator": "!="}
    assert enabled(source, not_equal, answers) is False


@pytest.mark.parametrize(
    ("source", "condition", "answer", "expected"),
    [
        ({"type": "boolean"}, {"answerBoolean": False}, {"valueBoolean": False}, True),
        ({"type": "boolean"}, {"answerBoolean": True}, {"valueBoolean": False}, False),
        ({"type": "decimal"}, {"answerDecimal": 2.5}, {"valueDecimal": 2.5}, True),
        ({"type": "decimal"}, {"answerInteger": 2}, {"valueDecimal": 2.0}, True),
        ({"type": "string"}, {"answerString": "x"}, {"valueString": "x"}, True),
        ({"type": "date"}, {"answerDate": "2024-01-01"}, {"valueDate": "2024-01-01"}, True),
        (
            {"type": "dateTime"},
            {"answerDateTime": "2024-01-01T10:00:00Z"},
            {"valueDateTime": "2024-01-01T12:00:00+02:00"},
            True,
        ),
        ({"type": "time"}, {"answerTime": "10:00:00"}, {"valueTime": "10:00:00"}, True),
        (
            {"type": "choice"},
            {"answerCoding": {"code": "a"}},  # no system in the condition: code alone decides
            {"valueCoding": {"system": S, "code": "a"}},
            True,
        ),
        (
            {"type": "choice"},
            {"answerCoding": {"system": "http://other", "code": "a"}},
            {"valueCoding": {"system": S, "code": "a"}},
            False,
        ),
        (
            {"type": "quantity"},
            {"answerQuantity": {"value": 5, "system": "http://unitsofmeasure.org", "code": "mg"}},
            {"valueQuantity": {"value": 5.0, "system": "http://unitsofmeasure.org", "code": "mg"}},
            True,
        ),
        (
            {"type": "reference"},
            {"answerReference": {"reference": "Patient/1"}},
            {"valueReference": {"reference": "Patient/1"}},
            True,
        ),
    ],
)
def test_equality_per_type(source, condition, answer, expected):
    assert (
        enabled(
            {"linkId": "x", **source}, {"question": "x", "operator": "=", **condition}, [answer]
        )
        is expected
    )


@pytest.mark.parametrize(
    ("source", "condition", "answer", "expected"),
    [
        ({"type": "date"}, {"answerDate": "2024-01-01"}, {"valueDate": "2024-06-01"}, True),
        ({"type": "date"}, {"answerDate": "2024-01-01"}, {"valueDate": "2023-06-01"}, False),
        # different precision cannot be ordered
        ({"type": "date"}, {"answerDate": "2024-01-01"}, {"valueDate": "2025"}, False),
        (
            {"type": "dateTime"},
            {"answerDateTime": "2024-01-01T10:00:00Z"},
            {"valueDateTime": "2024-01-01T11:30:00+01:00"},
            True,
        ),
        (
            {"type": "quantity"},
            {"answerQuantity": {"value": 5, "code": "mg"}},
            {"valueQuantity": {"value": 6, "code": "mg"}},
            True,
        ),
        # different units cannot be ordered
        (
            {"type": "quantity"},
            {"answerQuantity": {"value": 5, "code": "mg"}},
            {"valueQuantity": {"value": 6, "code": "g"}},
            False,
        ),
        ({"type": "decimal"}, {"answerDecimal": 0.1}, {"valueDecimal": 0.2}, True),
    ],
)
def test_greater_than_per_type(source, condition, answer, expected):
    assert (
        enabled(
            {"linkId": "x", **source}, {"question": "x", "operator": ">", **condition}, [answer]
        )
        is expected
    )


def two_conditions(behavior: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "linkId": "dep",
        "type": "string",
        "enableWhen": [
            {"question": "a", "operator": "=", "answerBoolean": True},
            {"question": "b", "operator": "=", "answerBoolean": True},
        ],
    }
    if behavior:
        item["enableBehavior"] = behavior
    return {
        "resourceType": "Questionnaire",
        "item": [{"linkId": "a", "type": "boolean"}, {"linkId": "b", "type": "boolean"}, item],
    }


@pytest.mark.parametrize(
    ("behavior", "a", "b", "expected"),
    [
        ("all", True, True, True),
        ("all", True, False, False),
        ("any", True, False, True),
        ("any", False, False, False),
        (None, True, False, False),  # absent behaviour is read as "all"
    ],
)
def test_enable_behavior(behavior, a, b, expected):
    questionnaire = two_conditions(behavior)
    response = {
        "resourceType": "QuestionnaireResponse",
        "item": [
            {"linkId": "a", "answer": [{"valueBoolean": a}]},
            {"linkId": "b", "answer": [{"valueBoolean": b}]},
        ],
    }
    index = QuestionnaireIndex(questionnaire)
    root = build_tree(index, response)
    assert Enablement(index, root).is_enabled(index.by_link_id["dep"], root) is expected


def test_answers_of_a_disabled_question_do_not_count():
    questionnaire = {
        "resourceType": "Questionnaire",
        "item": [
            {"linkId": "a", "type": "boolean"},
            {
                "linkId": "b",
                "type": "boolean",
                "enableWhen": [{"question": "a", "operator": "=", "answerBoolean": True}],
            },
            {
                "linkId": "c",
                "type": "string",
                "enableWhen": [{"question": "b", "operator": "=", "answerBoolean": True}],
            },
        ],
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "item": [
            {"linkId": "a", "answer": [{"valueBoolean": False}]},
            {"linkId": "b", "answer": [{"valueBoolean": True}]},  # answered, but disabled
        ],
    }
    index = QuestionnaireIndex(questionnaire)
    root = build_tree(index, response)
    assert Enablement(index, root).is_enabled(index.by_link_id["c"], root) is False


def test_nearest_instance_in_repeating_group():
    questionnaire = {
        "resourceType": "Questionnaire",
        "item": [
            {
                "linkId": "episode",
                "type": "group",
                "repeats": True,
                "item": [
                    {"linkId": "injected", "type": "boolean"},
                    {
                        "linkId": "shared",
                        "type": "boolean",
                        "enableWhen": [
                            {"question": "injected", "operator": "=", "answerBoolean": True}
                        ],
                    },
                ],
            }
        ],
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "item": [
            {
                "linkId": "episode",
                "item": [{"linkId": "injected", "answer": [{"valueBoolean": True}]}],
            },
            {
                "linkId": "episode",
                "item": [{"linkId": "injected", "answer": [{"valueBoolean": False}]}],
            },
        ],
    }
    index = QuestionnaireIndex(questionnaire)
    root = build_tree(index, response)
    enablement = Enablement(index, root)
    first, second = root.children
    shared = index.by_link_id["shared"]
    assert enablement.is_enabled(shared, first) is True
    assert enablement.is_enabled(shared, second) is False


def test_cycle_counts_as_disabled():
    questionnaire = {
        "resourceType": "Questionnaire",
        "item": [
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
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "item": [
            {"linkId": "a", "answer": [{"valueBoolean": True}]},
            {"linkId": "b", "answer": [{"valueBoolean": True}]},
        ],
    }
    index = QuestionnaireIndex(questionnaire)
    root = build_tree(index, response)
    assert Enablement(index, root).is_enabled(index.by_link_id["a"], root) is False
