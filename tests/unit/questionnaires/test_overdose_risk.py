"""Post-release overdose risk checklist: a local, non-validated checklist whose triage rule
(version 1.0.0) flags "high priority for warm handoff" when any listed condition holds."""

from __future__ import annotations

from typing import Any

import pytest

from service.questionnaires.observations import build_observations
from service.questionnaires.scoring import score_response
from service.questionnaires.urls import OVERDOSE_RISK_FACTOR_CS, SCREENING_ITEM_CS
from service.questionnaires.validate import validate_response

NO_FACTORS: dict[str, Any] = {
    "opioid-use-pre-custody": False,
    "overdose-ever": False,
    "fentanyl-use": "LA32-8",
    "co-use": ["none-of-these"],
    "injection-past-12m": False,
    "naloxone-in-hand": True,
    "moud-at-release": "no-moud",
}
RULE_ORDER = [
    "opioid-use-not-on-moud",
    "prior-overdose",
    "injection-use",
    "benzodiazepine-or-alcohol-co-use",
    "no-naloxone-at-release",
]


def triage(
    instruments: Any, respond: Any, answers: dict[str, Any], status: str = "completed"
) -> Any:
    checklist = instruments["overdose-risk"]
    response = respond(checklist, answers, status=status)
    assert validate_response(checklist, response) == []
    result = score_response(checklist, response)
    assert result.scores == ()  # a checklist, deliberately without a summed score
    assert result.triage is not None
    return result.triage


def test_no_factor_gives_standard_priority(instruments, respond):
    outcome = triage(instruments, respond, NO_FACTORS)
    assert outcome.flagged is False
    assert outcome.factors == ()
    assert outcome.result.code == "warm-handoff-standard-priority"
    assert outcome.rule_version == "1.0.0"


@pytest.mark.parametrize(
    ("change", "factor"),
    [
        ({"opioid-use-pre-custody": True}, "opioid-use-not-on-moud"),
        ({"overdose-ever": True}, "prior-overdose"),
        ({"injection-past-12m": True}, "injection-use"),
        ({"co-use": ["benzodiazepines"]}, "benzodiazepine-or-alcohol-co-use"),
        ({"co-use": ["stimulants", "alcohol"]}, "benzodiazepine-or-alcohol-co-use"),
        ({"naloxone-in-hand": False}, "no-naloxone-at-release"),
    ],
)
def test_each_factor_alone_flags_high_priority(instruments, respond, change, factor):
    outcome = triage(instruments, respond, {**NO_FACTORS, **change})
    assert outcome.flagged is True
    assert outcome.result.code == "warm-handoff-high-priority"
    assert [(f.system, f.code) for f in outcome.factors] == [(OVERDOSE_RISK_FACTOR_CS, factor)]


@pytest.mark.parametrize("moud", ["methadone", "buprenorphine", "naltrexone-xr"])
def test_opioid_use_on_moud_is_not_flagged(instruments, respond, moud):
    answers = {**NO_FACTORS, "opioid-use-pre-custody": True, "moud-at-release": moud}
    assert triage(instruments, respond, answers).flagged is False


def test_non_triggering_factors_do_not_flag(instruments, respond):
    answers = {
        **NO_FACTORS,
        "fentanyl-use": "LA33-6",
        "co-use": ["stimulants", "xylazine"],
        "uses-alone": True,
        "housing-at-release": "housing-street",
        "psychiatric-dx-or-meds": True,
    }
    assert triage(instruments, respond, answers).flagged is False


def test_every_factor_is_listed_in_rule_order(instruments, respond):
    answers = {
        **NO_FACTORS,
        "opioid-use-pre-custody": True,
        "overdose-ever": True,
        "injection-past-12m": True,
        "co-use": ["alcohol"],
        "naloxone-in-hand": False,
    }
    assert [f.code for f in triage(instruments, respond, answers).factors] == RULE_ORDER


def test_unrecorded_naloxone_and_moud_count_as_missing(instruments, respond):
    # an in-progress checklist: only opioid use is known so far
    outcome = triage(instruments, respond, {"opioid-use-pre-custody": True}, status="in-progress")
    assert [f.code for f in outcome.factors] == ["opioid-use-not-on-moud", "no-naloxone-at-release"]


def test_triage_observation(instruments, respond):
    checklist = instruments["overdose-risk"]
    response = respond(checklist, {**NO_FACTORS, "overdose-ever": True, "naloxone-in-hand": False})
    result = score_response(checklist, response)

    [observation] = build_observations(
        questionnaire=checklist,
        response=response,
        result=result,
        response_reference="QuestionnaireResponse/qr1",
        subject={"reference": "Patient/p1"},
        performer={"reference": "Practitioner/peer"},
        effective="2026-11-26T10:00:00Z",
    )

    assert observation["code"]["coding"] == [
        {
            "system": SCREENING_ITEM_CS,
            "code": "overdose-risk-triage",
            "display": "Post-release overdose risk triage",
        }
    ]
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "warm-handoff-high-priority"
    assert "not a validated risk score" in observation["note"][0]["text"]
    assert observation["method"]["text"].endswith("version 1.0.0")
    components = [
        (c["code"]["coding"][0]["code"], c.get("valueBoolean", c.get("valueString")))
        for c in observation["component"]
    ]
    assert components == [
        ("triage-result", None),
        ("prior-overdose", True),
        ("no-naloxone-at-release", True),
        ("triage-rule-version", "1.0.0"),
    ]
    result_component = observation["component"][0]["valueCodeableConcept"]
    assert result_component["coding"][0]["code"] == "warm-handoff-high-priority"
    assert "valueInteger" not in observation
    assert observation["derivedFrom"] == [{"reference": "QuestionnaireResponse/qr1"}]


def test_checklist_items_are_coded_with_risk_factors(instruments):
    checklist = instruments["overdose-risk"]
    questions = [item for group in checklist["item"] for item in group.get("item", [])]
    assert questions
    assert all(item["code"][0]["system"] == OVERDOSE_RISK_FACTOR_CS for item in questions)
