"""validate_response: every kind of bad answer, each alone and all reported at once."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.questionnaires.tree import link_id_of
from service.questionnaires.validate import validate_response

S = "http://example.org/codes"
MIN = "http://hl7.org/fhir/StructureDefinition/minValue"
MAX = "http://hl7.org/fhir/StructureDefinition/maxValue"
ROOT = "QuestionnaireResponse"


def where(*link_ids: str) -> str:
    return ROOT + "".join(f".item.where(linkId='{i}')" for i in link_ids)


def questionnaire() -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "url": "http://example.org/Questionnaire/sink",
        "version": "1",
        "status": "active",
        "contained": [
            {
                "resourceType": "ValueSet",
                "id": "colours",
                "status": "active",
                "compose": {
                    "include": [{"system": S, "concept": [{"code": "red"}, {"code": "blue"}]}]
                },
            }
        ],
        "item": [
            {"linkId": "b", "type": "boolean", "required": True},
            {"linkId": "dec", "type": "decimal"},
            {
                "extension": [{"url": MIN, "valueInteger": 0}, {"url": MAX, "valueInteger": 10}],
                "linkId": "int",
                "type": "integer",
            },
            {"linkId": "d", "type": "date"},
            {"linkId": "dt", "type": "dateTime"},
            {"linkId": "t", "type": "time"},
            {"linkId": "s", "type": "string", "maxLength": 5},
            {"linkId": "txt", "type": "text"},
            {"linkId": "u", "type": "url"},
            {
                "linkId": "c",
                "type": "choice",
                "answerOption": [
                    {"valueCoding": {"system": S, "code": "a"}},
                    {"valueCoding": {"system": S, "code": "b"}},
                ],
            },
            {
                "linkId": "oc",
                "type": "open-choice",
                "answerOption": [{"valueCoding": {"system": S, "code": "x"}}],
            },
            {
                "linkId": "ci",
                "type": "choice",
                "answerOption": [{"valueInteger": 1}, {"valueInteger": 2}],
            },
            {"linkId": "att", "type": "attachment"},
            {"linkId": "ref", "type": "reference"},
            {"linkId": "q", "type": "quantity"},
            {
                "linkId": "multi",
                "type": "choice",
                "repeats": True,
                "answerOption": [
                    {"valueCoding": {"system": S, "code": "m1"}},
                    {"valueCoding": {"system": S, "code": "m2"}},
                ],
            },
            {"linkId": "vs-contained", "type": "choice", "answerValueSet": "#colours"},
            {
                "linkId": "vs-builtin",
                "type": "choice",
                "answerValueSet": "https://handoff.dev/fhir/ValueSet/yes-no",
            },
            {
                "linkId": "g",
                "type": "group",
                "required": True,
                "item": [
                    {"linkId": "g1", "type": "string", "required": True},
                    {
                        "linkId": "g2",
                        "type": "integer",
                        "enableWhen": [
                            {"question": "g1", "operator": "exists", "answerBoolean": True}
                        ],
                    },
                ],
            },
            {
                "linkId": "opt",
                "type": "group",
                "item": [{"linkId": "opt1", "type": "string", "required": True}],
            },
            {
                "linkId": "rg",
                "type": "group",
                "repeats": True,
                "item": [{"linkId": "rg-x", "type": "string"}],
            },
            {
                "linkId": "parent",
                "type": "boolean",
                "item": [
                    {
                        "linkId": "child",
                        "type": "string",
                        "required": True,
                        "enableWhen": [
                            {"question": "parent", "operator": "=", "answerBoolean": True}
                        ],
                    }
                ],
            },
            {"linkId": "disp", "type": "display", "text": "Read this"},
        ],
    }


def item(link_id: str, *answers: dict[str, Any]) -> dict[str, Any]:
    return {"linkId": link_id, "answer": list(answers)}


def valid_response() -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/Questionnaire/sink|1",
        "status": "completed",
        "item": [
            item("b", {"valueBoolean": False}),
            item("dec", {"valueDecimal": 1.5}),
            item("int", {"valueInteger": 10}),
            item("d", {"valueDate": "2024-02-29"}),
            item("dt", {"valueDateTime": "2024-05-02T10:15:30+02:00"}),
            item("t", {"valueTime": "23:59:59"}),
            item("s", {"valueString": "12345"}),
            item("txt", {"valueString": "long text is fine here"}),
            item("u", {"valueUri": "https://example.org"}),
            item("c", {"valueCoding": {"system": S, "code": "b", "display": "ignored"}}),
            item("oc", {"valueString": "free text is allowed"}),
            item("ci", {"valueInteger": 2}),
            item("att", {"valueAttachment": {"contentType": "text/plain", "data": "aGk="}}),
            item("ref", {"valueReference": {"reference": "Practitioner/1"}}),
            item("q", {"valueQuantity": {"value": 3, "unit": "mg"}}),
            item(
                "multi",
                {"valueCoding": {"system": S, "code": "m1"}},
                {"valueCoding": {"system": S, "code": "m2"}},
            ),
            item("vs-contained", {"valueCoding": {"system": S, "code": "blue"}}),
            item("vs-builtin", {"valueCoding": {"system": "http://loinc.org", "code": "LA33-6"}}),
            {
                "linkId": "g",
                "item": [item("g1", {"valueString": "x"}), item("g2", {"valueInteger": 1})],
            },
            {"linkId": "rg", "item": [item("rg-x", {"valueString": "one"})]},
            {"linkId": "rg", "item": [item("rg-x", {"valueString": "two"})]},
            {
                "linkId": "parent",
                "answer": [{"valueBoolean": True, "item": [item("child", {"valueString": "y"})]}],
            },
            {"linkId": "disp", "text": "Read this"},
        ],
    }


def find(response: dict[str, Any], link_id: str) -> dict[str, Any]:
    stack: list[dict[str, Any]] = list(response["item"])
    while stack:
        current = stack.pop()
        if current["linkId"] == link_id:
            return current
        stack.extend(current.get("item", []))
        for answer in current.get("answer", []):
            stack.extend(answer.get("item", []))
    raise KeyError(link_id)


def summary(issues: list[Any]) -> list[tuple[str, str]]:
    return sorted((i.code, i.expression[0]) for i in issues)


def test_valid_response_has_no_issues():
    assert validate_response(questionnaire(), valid_response()) == []


def test_in_progress_response_may_leave_required_items_out():
    response = {"resourceType": "QuestionnaireResponse", "status": "in-progress", "item": []}
    assert validate_response(questionnaire(), response) == []


def mutate(link_id: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
    response = valid_response()
    find(response, link_id)["answer"] = answers
    return response


@pytest.mark.parametrize(
    ("link_id", "answers", "code"),
    [
        # wrong value[x] for the item type
        ("b", [{"valueString": "yes"}], "value"),
        ("int", [{"valueDecimal": 1.5}], "value"),
        ("dec", [{"valueInteger": 1}], "value"),
        ("d", [{"valueDateTime": "2024-01-01T00:00:00Z"}], "value"),
        ("c", [{"valueString": "a"}], "value"),
        ("ref", [{"valueString": "Practitioner/1"}], "value"),
        # right value[x], wrong JSON shape or format
        ("b", [{"valueBoolean": "true"}], "value"),
        ("int", [{"valueInteger": True}], "value"),
        ("int", [{"valueInteger": "3"}], "value"),
        ("d", [{"valueDate": "2024-02-30"}], "value"),
        ("d", [{"valueDate": "02/01/2024"}], "value"),
        ("dt", [{"valueDateTime": "2024-05-02T10:15:30"}], "value"),
        ("t", [{"valueTime": "25:00:00"}], "value"),
        ("s", [{"valueString": ""}], "value"),
        ("q", [{"valueQuantity": {"value": "3"}}], "value"),
        # limits
        ("int", [{"valueInteger": 11}], "value"),
        ("int", [{"valueInteger": -1}], "value"),
        ("s", [{"valueString": "123456"}], "value"),
        # code not among the options
        ("c", [{"valueCoding": {"system": S, "code": "zzz"}}], "code-invalid"),
        ("c", [{"valueCoding": {"code": "a"}}], "code-invalid"),  # system omitted
        ("c", [{"valueCoding": {"system": "http://other", "code": "a"}}], "code-invalid"),
        ("oc", [{"valueCoding": {"system": S, "code": "y"}}], "code-invalid"),
        ("ci", [{"valueInteger": 3}], "code-invalid"),
        ("vs-contained", [{"valueCoding": {"system": S, "code": "green"}}], "code-invalid"),
        (
            "vs-builtin",
            [{"valueCoding": {"system": "http://loinc.org", "code": "LA4489-6"}}],
            "code-invalid",
        ),
        # malformed answers
        ("b", [{"valueBoolean": True, "valueString": "x"}], "structure"),
        ("b", [{}], "structure"),
    ],
)
def test_each_bad_answer(link_id, answers, code):
    issues = validate_response(questionnaire(), mutate(link_id, answers))
    assert len(issues) == 1, issues
    assert issues[0].code == code
    assert issues[0].severity == "error"
    assert link_id_of(issues[0].expression[0]) == link_id
    assert issues[0].expression[0].endswith(".answer[0]")


def test_unknown_link_id():
    response = valid_response()
    response["item"].append(item("nope", {"valueString": "x"}))
    assert summary(validate_response(questionnaire(), response)) == [("structure", where("nope"))]


def test_link_id_at_the_wrong_level():
    response = valid_response()
    response["item"].append(item("g1", {"valueString": "x"}))
    [issue] = validate_response(questionnaire(), response)
    assert (issue.code, issue.expression[0]) == ("structure", where("g1"))
    assert "belongs under 'g'" in issue.diagnostics


def test_missing_required_question_and_group():
    response = valid_response()
    response["item"] = [i for i in response["item"] if i["linkId"] not in ("b", "g")]
    assert summary(validate_response(questionnaire(), response)) == [
        ("required", where("b")),
        ("required", where("g")),
    ]


def test_missing_required_inside_present_group():
    response = valid_response()
    find(response, "g")["item"] = [item("g2", {"valueInteger": 1})]
    # g1 is missing; g2 depends on g1 existing, so it is disabled and must not be answered either
    assert summary(validate_response(questionnaire(), response)) == [
        ("invariant", where("g", "g2")),
        ("required", where("g", "g1")),
    ]


def test_required_item_of_an_absent_optional_group_is_not_reported():
    response = valid_response()
    assert all(i["linkId"] != "opt" for i in response["item"])
    assert validate_response(questionnaire(), response) == []
    response["item"].append({"linkId": "opt", "item": []})
    assert summary(validate_response(questionnaire(), response)) == [
        ("required", where("opt", "opt1"))
    ]


def test_answered_disabled_item():
    response = valid_response()
    parent = find(response, "parent")
    parent["answer"][0]["valueBoolean"] = False
    assert summary(validate_response(questionnaire(), response)) == [
        ("invariant", where("parent") + ".answer[0]" + ".item.where(linkId='child')")
    ]


def test_disabled_required_item_is_not_required():
    response = valid_response()
    find(response, "parent")["answer"] = [{"valueBoolean": False}]
    assert validate_response(questionnaire(), response) == []


def test_repeats_not_allowed():
    response = mutate(
        "c",
        [{"valueCoding": {"system": S, "code": "a"}}, {"valueCoding": {"system": S, "code": "b"}}],
    )
    assert summary(validate_response(questionnaire(), response)) == [("invariant", where("c"))]


def test_same_question_twice_is_refused_but_repeating_groups_are_fine():
    response = valid_response()
    response["item"].append(item("dec", {"valueDecimal": 2}))
    [issue] = validate_response(questionnaire(), response)
    assert issue.code == "invariant"
    assert issue.expression[0] == where("dec") + "[0]"


def test_repeating_group_instances_get_indexed_paths():
    response = valid_response()
    rgs = [i for i in response["item"] if i["linkId"] == "rg"]
    rgs[1]["item"][0]["answer"] = [{"valueInteger": 2}]
    assert summary(validate_response(questionnaire(), response)) == [
        ("value", where("rg") + "[1].item.where(linkId='rg-x').answer[0]")
    ]


def test_group_and_display_items_take_no_answers():
    response = valid_response()
    find(response, "g")["answer"] = [{"valueString": "x"}]
    find(response, "disp")["answer"] = [{"valueString": "x"}]
    assert summary(validate_response(questionnaire(), response)) == [
        ("structure", where("disp")),
        ("structure", where("g")),
    ]


def test_unresolvable_value_set_is_reported_once():
    q = questionnaire()
    q["item"][16]["answerValueSet"] = "http://nowhere.example/ValueSet/x"
    response = mutate(
        "vs-contained",
        [
            {"valueCoding": {"system": S, "code": "red"}},
            {"valueCoding": {"system": S, "code": "blue"}},
        ],
    )
    q["item"][16]["repeats"] = True
    assert summary(validate_response(q, response)) == [("not-supported", where("vs-contained"))]


def test_response_for_another_questionnaire():
    response = valid_response()
    response["questionnaire"] = "http://example.org/Questionnaire/sink|2"
    [issue] = validate_response(questionnaire(), response)
    assert (issue.code, issue.expression) == (
        "business-rule",
        ("QuestionnaireResponse.questionnaire",),
    )


def test_bad_status():
    response = valid_response()
    response["status"] = "done"
    assert summary(validate_response(questionnaire(), response)) == [
        ("value", "QuestionnaireResponse.status")
    ]


def test_every_problem_is_reported_at_once():
    response = valid_response()
    response["item"].append(item("nope", {"valueString": "x"}))  # unknown linkId
    find(response, "int")["answer"] = [{"valueString": "3"}]  # wrong type
    find(response, "c")["answer"] = [{"valueCoding": {"system": S, "code": "zzz"}}]  # not an option
    response["item"] = [i for i in response["item"] if i["linkId"] != "b"]  # required missing
    find(response, "parent")["answer"][0]["valueBoolean"] = False  # answered disabled item
    find(response, "dec")["answer"] = [{"valueDecimal": 1}, {"valueDecimal": 2}]  # no repeats

    issues = validate_response(questionnaire(), copy.deepcopy(response))

    assert summary(issues) == [
        ("code-invalid", where("c") + ".answer[0]"),
        ("invariant", where("dec")),
        ("invariant", where("parent") + ".answer[0].item.where(linkId='child')"),
        ("required", where("b")),
        ("structure", where("nope")),
        ("value", where("int") + ".answer[0]"),
    ]
    assert {link_id_of(i.expression[0]) for i in issues} == {
        "c",
        "dec",
        "child",
        "b",
        "nope",
        "int",
    }


def test_diagnostics_do_not_echo_free_text():
    response = mutate("b", [{"valueString": "my secret"}])
    [issue] = validate_response(questionnaire(), response)
    assert "my secret" not in issue.diagnostics


def test_link_id_of_handles_quotes():
    assert link_id_of("QuestionnaireResponse.item.where(linkId='it\\'s')") == "it's"
    assert link_id_of("QuestionnaireResponse.status") is None
