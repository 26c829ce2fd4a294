"""response_from_answers: simple linkId -> value answers to a QuestionnaireResponse."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pytest

from service.errors import BusinessRuleError
from service.questionnaires.answers import response_from_answers
from service.questionnaires.validate import validate_response

S1, S2 = "http://example.org/one", "http://example.org/two"


def questionnaire() -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "url": "http://example.org/Questionnaire/q",
        "version": "2",
        "status": "active",
        "item": [
            {
                "linkId": "c",
                "text": "Pick",
                "type": "choice",
                "answerOption": [
                    {"valueCoding": {"system": S1, "code": "a", "display": "A"}},
                    {"valueCoding": {"system": S1, "code": "shared"}},
                    {"valueCoding": {"system": S2, "code": "shared"}},
                ],
            },
            {
                "linkId": "many",
                "type": "choice",
                "repeats": True,
                "answerOption": [
                    {"valueCoding": {"system": S1, "code": "x"}},
                    {"valueCoding": {"system": S1, "code": "y"}},
                ],
            },
            {
                "linkId": "open",
                "type": "open-choice",
                "answerOption": [{"valueCoding": {"system": S1, "code": "o"}}],
            },
            {
                "linkId": "n",
                "type": "choice",
                "answerOption": [{"valueInteger": 1}, {"valueInteger": 2}],
            },
            {
                "linkId": "g",
                "type": "group",
                "item": [
                    {"linkId": "b", "type": "boolean"},
                    {"linkId": "i", "type": "integer"},
                    {"linkId": "dec", "type": "decimal"},
                ],
            },
            {"linkId": "d", "type": "date"},
            {"linkId": "dt", "type": "dateTime"},
            {"linkId": "t", "type": "time"},
            {"linkId": "ref", "type": "reference"},
            {
                "linkId": "yn",
                "type": "choice",
                "answerValueSet": "https://handoff.dev/fhir/ValueSet/yes-no",
            },
            {
                "linkId": "parent",
                "type": "boolean",
                "item": [{"linkId": "child", "type": "string"}],
            },
            {"linkId": "info", "type": "display", "text": "Info"},
            {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-calculatedExpression",
                        "valueExpression": {"language": "text/fhirpath", "expression": "1"},
                    }
                ],
                "linkId": "score",
                "type": "integer",
            },
        ],
    }


def build(answers: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "subject": "Patient/p1",
        "author": {"reference": "Practitioner/s1"},
        "authored": "2026-11-26T10:00:00Z",
    }
    arguments.update(kwargs)
    return response_from_answers(questionnaire(), answers, **arguments)


def test_builds_a_valid_response_in_questionnaire_order():
    response = build(
        {
            "parent": True,
            "child": "follow-up",
            "dt": datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
            "d": date(2026, 12, 1),
            "t": time(8, 0),
            "dec": Decimal("2.5"),
            "i": 3,
            "b": False,
            "many": ["x", "y"],
            "c": "a",
            "open": "something else",
            "n": 2,
            "ref": "Practitioner/9",
            "yn": "LA33-6",
        }
    )
    assert response["resourceType"] == "QuestionnaireResponse"
    assert response["questionnaire"] == "http://example.org/Questionnaire/q|2"
    assert response["status"] == "completed"
    assert response["subject"] == {"reference": "Patient/p1"}
    assert response["author"] == {"reference": "Practitioner/s1"}
    assert [i["linkId"] for i in response["item"]] == [
        "c",
        "many",
        "open",
        "n",
        "g",
        "d",
        "dt",
        "t",
        "ref",
        "yn",
        "parent",
    ]
    items = {i["linkId"]: i for i in response["item"]}
    assert items["c"] == {
        "linkId": "c",
        "text": "Pick",
        "answer": [{"valueCoding": {"system": S1, "code": "a", "display": "A"}}],
    }
    assert [a["valueCoding"]["code"] for a in items["many"]["answer"]] == ["x", "y"]
    assert items["open"]["answer"] == [{"valueString": "something else"}]
    assert items["n"]["answer"] == [{"valueInteger": 2}]
    assert items["g"]["item"] == [
        {"linkId": "b", "answer": [{"valueBoolean": False}]},
        {"linkId": "i", "answer": [{"valueInteger": 3}]},
        {"linkId": "dec", "answer": [{"valueDecimal": 2.5}]},
    ]
    assert items["d"]["answer"] == [{"valueDate": "2026-12-01"}]
    assert items["dt"]["answer"] == [{"valueDateTime": "2026-11-26T09:30:00+00:00"}]
    assert items["t"]["answer"] == [{"valueTime": "08:00:00"}]
    assert items["ref"]["answer"] == [{"valueReference": {"reference": "Practitioner/9"}}]
    assert items["yn"]["answer"][0]["valueCoding"]["system"] == "http://loinc.org"
    assert items["parent"]["answer"] == [
        {
            "valueBoolean": True,
            "item": [{"linkId": "child", "answer": [{"valueString": "follow-up"}]}],
        }
    ]
    assert validate_response(questionnaire(), response) == []


def test_system_bar_code_picks_between_options_sharing_a_code():
    response = build({"c": f"{S2}|shared"})
    assert response["item"][0]["answer"] == [{"valueCoding": {"system": S2, "code": "shared"}}]


def test_none_and_empty_list_mean_unanswered():
    response = build({"c": None, "many": [], "b": True}, author=None, status="in-progress")
    assert [i["linkId"] for i in response["item"]] == ["g"]
    assert "author" not in response
    assert response["status"] == "in-progress"


def test_every_problem_is_reported_at_once():
    with pytest.raises(BusinessRuleError) as raised:
        build(
            {
                "nope": 1,  # unknown key
                "c": "zzz",  # not an option
                "shared-ambiguity": None,  # unknown too, even when empty
                "b": "yes",  # wrong type
                "i": 2.5,  # not an integer
                "many": "x",  # fine: a single value for a repeating item
                "d": "26/11/2026",  # bad date
                "dt": datetime(2026, 1, 1),
                "g": 1,  # group
                "info": "x",  # display
                "score": 3,  # calculated by the service
                "n": [1, 2],  # several values, item does not repeat
                "child": "orphan",  # follow-up without its parent's answer
            },
            status="finished",
        )
    error = raised.value
    assert error.status == 422
    found = sorted((i.code, i.expression[0]) for i in error.issues)
    r = "QuestionnaireResponse"
    assert found == sorted(
        [
            ("value", f"{r}.status"),
            ("structure", f"{r}.item.where(linkId='nope')"),
            ("code-invalid", f"{r}.item.where(linkId='c')"),
            ("structure", f"{r}.item.where(linkId='shared-ambiguity')"),
            ("value", f"{r}.item.where(linkId='g').item.where(linkId='b')"),
            ("value", f"{r}.item.where(linkId='g').item.where(linkId='i')"),
            ("value", f"{r}.item.where(linkId='d')"),
            ("value", f"{r}.item.where(linkId='dt')"),
            ("structure", f"{r}.item.where(linkId='g')"),
            ("structure", f"{r}.item.where(linkId='info')"),
            ("business-rule", f"{r}.item.where(linkId='score')"),
            ("invariant", f"{r}.item.where(linkId='n')"),
            ("structure", f"{r}.item.where(linkId='parent')"),
        ]
    )
    assert error.diagnostics == "13 problems with the answers"


def test_ambiguous_code_needs_a_system():
    with pytest.raises(BusinessRuleError) as raised:
        build({"c": "shared"})
    assert "system|code" in raised.value.issues[0].diagnostics


def test_naive_authored_is_refused():
    with pytest.raises(ValueError, match="timezone"):
        build({}, authored=datetime(2026, 1, 1))


def test_builtin_instrument_round_trip(instruments):
    dast = instruments["dast-10"]
    answers = {f"dast10-{n}": "LA32-8" for n in range(1, 11)}
    response = response_from_answers(
        dast, answers, subject={"reference": "Patient/1"}, author=None, authored="2026-11-26"
    )
    assert response["questionnaire"] == "https://handoff.dev/fhir/Questionnaire/dast-10|1.0.0"
    assert validate_response(dast, response) == []
