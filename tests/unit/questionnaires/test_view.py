"""instrument_view: the plain JSON form for a jail UI."""

from __future__ import annotations

import json

from service.questionnaires.view import instrument_view


def test_view_top_level(instruments):
    view = instrument_view(instruments["dast-10"])
    assert view["key"] == "dast-10"
    assert view["url"] == "https://handoff.dev/fhir/Questionnaire/dast-10"
    assert view["version"] == "1.0.0"
    assert view["canonical"] == "https://handoff.dev/fhir/Questionnaire/dast-10|1.0.0"
    assert view["title"].startswith("DAST-10")
    assert "CAMH" in view["copyright"]
    assert view["triage"] is None
    json.dumps(view)  # plain JSON, no Decimals


def test_choices_carry_scores_including_reverse_item(instruments):
    items = {i["link_id"]: i for i in instrument_view(instruments["dast-10"])["items"]}
    assert [(c["code"], c["display"], c["score"]) for c in items["dast10-1"]["choices"]] == [
        ("LA33-6", "Yes", 1),
        ("LA32-8", "No", 0),
    ]
    assert [(c["code"], c["score"]) for c in items["dast10-3"]["choices"]] == [
        ("LA33-6", 0),
        ("LA32-8", 1),
    ]
    score = items["dast10-score"]
    assert (score["calculated"], score["read_only"], score["required"]) == (True, True, False)
    assert [(b["code"], b["low"], b["high"]) for b in score["bands"]] == [
        ("dast10-none", 0, 0),
        ("dast10-low", 1, 2),
        ("dast10-moderate", 3, 5),
        ("dast10-substantial", 6, 8),
        ("dast10-severe", 9, 10),
    ]


def test_sex_specific_bands(instruments):
    items = {i["link_id"]: i for i in instrument_view(instruments["audit-c"])["items"]}
    bands = [(b["sex"], b["code"], b["low"], b["high"]) for b in items["auditc-score"]["bands"]]
    assert ("male", "POS", 4, 12) in bands
    assert ("female", "POS", 3, 12) in bands
    assert (None, "POS", 3, 12) in bands
    assert items["auditc-2"]["enable_when"] == [
        {"question": "auditc-1", "operator": "!=", "answer": "LA6270-8"}
    ]


def test_skip_logic_and_help_text(instruments):
    view = instrument_view(instruments["taps"])
    top = {i["link_id"]: i for i in view["items"]}
    alcohol_men = next(i for i in top["taps1"]["items"] if i["link_id"] == "taps1-alcohol-men")
    assert alcohol_men["enable_when"] == [{"question": "sex", "operator": "=", "answer": "male"}]
    assert alcohol_men["help"].startswith("One standard drink")
    assert alcohol_men["items"] == []  # the help display item is folded into "help"
    tobacco = top["taps2-tobacco"]
    assert tobacco["type"] == "group"
    assert tobacco["enable_behavior"] == "any"
    assert {r["answer"] for r in tobacco["enable_when"]} == {
        "LA18933-4",
        "LA18876-5",
        "LA18891-4",
        "LA18934-2",
    }
    follow_up = tobacco["items"][1]
    assert follow_up["enable_when"] == [
        {"question": "taps2-tobacco-use", "operator": "=", "answer": True}
    ]


def test_triage_rule_is_shown(instruments):
    view = instrument_view(instruments["overdose-risk"])
    assert view["triage"]["version"] == "1.0.0"
    assert view["triage"]["flag"]["code"] == "warm-handoff-high-priority"
    assert [c["factor"] for c in view["triage"]["conditions"]] == [
        "opioid-use-not-on-moud",
        "prior-overdose",
        "injection-use",
        "benzodiazepine-or-alcohol-co-use",
        "no-naloxone-at-release",
    ]
    items = {i["link_id"]: i for i in view["items"]}
    days = items["tolerance"]["items"][0]
    assert (days["link_id"], days["type"], days["min"]) == ("days-in-custody", "integer", 0)
    co_use = items["substances"]["items"][2]
    assert (co_use["link_id"], co_use["repeats"]) == ("co-use", True)


def test_non_coded_options_and_open_choice():
    questionnaire = {
        "resourceType": "Questionnaire",
        "id": "q",
        "status": "draft",
        "item": [
            {
                "linkId": "n",
                "type": "choice",
                "answerOption": [{"valueInteger": 1}, {"valueInteger": 2}],
            },
            {"linkId": "o", "type": "open-choice", "answerOption": [{"valueString": "a"}]},
        ],
    }
    items = instrument_view(questionnaire)["items"]
    assert [(c["code"], c["display"], c["score"]) for c in items[0]["choices"]] == [
        (1, "1", None),
        (2, "2", None),
    ]
    assert items[1]["allow_free_text"] is True
    assert instrument_view(questionnaire)["canonical"] is None
