"""TAPS Tool: TAPS-1 frequency items gate TAPS-2 per substance class; each TAPS-2 "yes" scores 1
(0 no use, 1 problem use, >= 2 higher risk)."""

from __future__ import annotations

from typing import Any

import pytest

from service.questionnaires.scoring import score_response
from service.questionnaires.validate import validate_response

NEVER, LESS_THAN_MONTHLY, MONTHLY, WEEKLY, DAILY = (
    "LA6270-8",
    "LA18933-4",
    "LA18876-5",
    "LA18891-4",
    "LA18934-2",
)
SUBSTANCES = [
    "tobacco",
    "alcohol",
    "marijuana",
    "cocaine",
    "heroin",
    "methamphetamine",
    "hallucinogens",
    "inhalants",
    "rx-opioids",
    "rx-sedatives",
    "rx-stimulants",
    "other",
]
DRUG_CLASSES = [
    "marijuana",
    "cocaine",
    "heroin",
    "methamphetamine",
    "hallucinogens",
    "inhalants",
    "other",
]
RX_CLASSES = ["rx-opioids", "rx-sedatives", "rx-stimulants"]


def taps1(sex: str = "female", **frequencies: str) -> dict[str, Any]:
    """TAPS-1 answers, every substance Never unless given."""
    alcohol_item = "taps1-alcohol-men" if sex == "male" else "taps1-alcohol-women"
    return {
        "sex": sex,
        "taps1-tobacco": frequencies.get("tobacco", NEVER),
        alcohol_item: frequencies.get("alcohol", NEVER),
        "taps1-drugs": frequencies.get("drugs", NEVER),
        "taps1-rx": frequencies.get("rx", NEVER),
    }


def subscores(result: Any) -> dict[str, int | None]:
    return {s.group_link_id.removeprefix("taps2-"): s.value for s in result.subscores}


def test_all_never_needs_no_taps2_and_scores_no_use_everywhere(instruments, respond):
    taps = instruments["taps"]
    response = respond(taps, taps1())
    assert validate_response(taps, response) == []

    result = score_response(taps, response)

    assert result.totals == ()
    assert subscores(result) == dict.fromkeys(SUBSTANCES, 0)
    assert {s.band.code.code for s in result.subscores if s.band} == {"taps-no-use"}
    assert len(result.subscores) == 12


@pytest.mark.parametrize("frequency", [LESS_THAN_MONTHLY, MONTHLY, WEEKLY, DAILY])
def test_any_answer_but_never_requires_taps2(instruments, respond, frequency):
    taps = instruments["taps"]
    issues = validate_response(taps, respond(taps, taps1(tobacco=frequency)))
    assert [(i.code, i.expression[0]) for i in issues] == [
        ("required", "QuestionnaireResponse.item.where(linkId='taps2-tobacco')")
    ]


def test_taps2_after_never_is_refused(instruments, respond):
    taps = instruments["taps"]
    answers = {**taps1(), "taps2-heroin-use": True, "taps2-heroin-control": True}
    issues = validate_response(taps, respond(taps, answers))
    # reported once, at the group whose enableWhen fails
    assert [(i.code, i.expression[0]) for i in issues] == [
        ("invariant", "QuestionnaireResponse.item.where(linkId='taps2-heroin')")
    ]
    # and never scored
    assert subscores(score_response(taps, respond(taps, answers)))["heroin"] == 0


def test_drug_answer_opens_the_illegal_drug_classes_only(instruments, respond):
    taps = instruments["taps"]
    issues = validate_response(taps, respond(taps, taps1(drugs=WEEKLY)))
    assert sorted(i.expression[0] for i in issues) == sorted(
        f"QuestionnaireResponse.item.where(linkId='taps2-{s}')" for s in DRUG_CLASSES
    )


def test_rx_answer_opens_the_prescription_classes_only(instruments, respond):
    taps = instruments["taps"]
    issues = validate_response(taps, respond(taps, taps1(rx=MONTHLY)))
    assert sorted(i.expression[0] for i in issues) == sorted(
        f"QuestionnaireResponse.item.where(linkId='taps2-{s}')" for s in RX_CLASSES
    )


@pytest.mark.parametrize(
    ("tobacco", "expected", "band"),
    [
        # use = no: 0, follow-ups are disabled
        ({"taps2-tobacco-use": False}, 0, "taps-no-use"),
        # use = yes, both follow-ups no: 1 + 0 + 0 = 1
        (
            {
                "taps2-tobacco-use": True,
                "taps2-tobacco-10cig": False,
                "taps2-tobacco-waking": False,
            },
            1,
            "taps-problem-use",
        ),
        # use = yes, one follow-up yes: 1 + 1 + 0 = 2
        (
            {"taps2-tobacco-use": True, "taps2-tobacco-10cig": False, "taps2-tobacco-waking": True},
            2,
            "taps-higher-risk",
        ),
        # everything yes: 1 + 1 + 1 = 3, the tobacco maximum
        (
            {"taps2-tobacco-use": True, "taps2-tobacco-10cig": True, "taps2-tobacco-waking": True},
            3,
            "taps-higher-risk",
        ),
    ],
)
def test_tobacco_subscore_bands(instruments, respond, tobacco, expected, band):
    taps = instruments["taps"]
    response = respond(taps, {**taps1(tobacco=DAILY), **tobacco})
    assert validate_response(taps, response) == []

    score = score_response(taps, response).score("taps2-tobacco-score")

    assert (score.value, score.band.code.code if score.band else None) == (expected, band)
    assert score.role == "subscore"
    assert score.group_link_id == "taps2-tobacco"


def test_follow_ups_only_after_a_yes_use_answer(instruments, respond):
    taps = instruments["taps"]
    answers = {**taps1(tobacco=WEEKLY), "taps2-tobacco-use": False, "taps2-tobacco-10cig": True}
    issues = validate_response(taps, respond(taps, answers))
    assert [(i.code, i.expression[0]) for i in issues] == [
        (
            "invariant",
            "QuestionnaireResponse.item.where(linkId='taps2-tobacco')"
            ".item.where(linkId='taps2-tobacco-10cig')",
        )
    ]


def test_alcohol_threshold_item_follows_sex(instruments, respond):
    taps = instruments["taps"]
    # a man answers the 5+ item; the 4+ item is disabled for him
    wrong = {**taps1(sex="male"), "taps1-alcohol-women": NEVER}
    issues = validate_response(taps, respond(taps, wrong))
    assert (
        "invariant",
        "QuestionnaireResponse.item.where(linkId='taps1').item.where(linkId='taps1-alcohol-women')",
    ) in [(i.code, i.expression[0]) for i in issues]
    # "other" gets the 4+ item (enableWhen sex != male)
    other = taps1(sex="other")
    assert validate_response(taps, respond(taps, other)) == []


def test_alcohol_maximum_for_a_man(instruments, respond):
    taps = instruments["taps"]
    answers = {
        **taps1(sex="male", alcohol=WEEKLY),
        "taps2-alcohol-use": True,
        "taps2-alcohol-heavy-men": True,
        "taps2-alcohol-control": True,
        "taps2-alcohol-concern": True,
    }
    response = respond(taps, answers)
    assert validate_response(taps, response) == []
    # 1 (use) + 1 (5+ drinks) + 1 (control) + 1 (concern) = 4; the 4+ item is disabled for men
    assert subscores(score_response(taps, response))["alcohol"] == 4


def test_alcohol_heavy_item_for_women_is_required_and_counts(instruments, respond):
    taps = instruments["taps"]
    answers = {
        **taps1(sex="female", alcohol=LESS_THAN_MONTHLY),
        "taps2-alcohol-use": True,
        "taps2-alcohol-control": False,
        "taps2-alcohol-concern": False,
    }
    issues = validate_response(taps, respond(taps, answers))
    assert [(i.code, i.expression[0]) for i in issues] == [
        (
            "required",
            "QuestionnaireResponse.item.where(linkId='taps2-alcohol')"
            ".item.where(linkId='taps2-alcohol-heavy-women')",
        )
    ]
    answers["taps2-alcohol-heavy-women"] = True
    # 1 (use) + 1 (4+ drinks) + 0 + 0 = 2
    assert subscores(score_response(taps, respond(taps, answers)))["alcohol"] == 2


def test_mixed_profile(instruments, respond):
    taps = instruments["taps"]
    answers = {
        **taps1(sex="female", tobacco=DAILY, drugs=WEEKLY, rx=LESS_THAN_MONTHLY),
        "taps2-tobacco-use": True,
        "taps2-tobacco-10cig": True,
        "taps2-tobacco-waking": False,
        **{f"taps2-{s}-use": False for s in DRUG_CLASSES if s != "heroin"},
        "taps2-heroin-use": True,
        "taps2-heroin-control": True,
        "taps2-heroin-concern": True,
        "taps2-rx-opioids-use": True,
        "taps2-rx-opioids-control": False,
        "taps2-rx-opioids-concern": False,
        "taps2-rx-sedatives-use": False,
        "taps2-rx-stimulants-use": False,
    }
    response = respond(taps, answers)
    assert validate_response(taps, response) == []
    assert subscores(score_response(taps, response)) == {
        "tobacco": 2,  # 1 + 1 + 0
        "alcohol": 0,  # TAPS-1 never: section skipped
        "marijuana": 0,
        "cocaine": 0,
        "heroin": 3,  # 1 + 1 + 1
        "methamphetamine": 0,
        "hallucinogens": 0,
        "inhalants": 0,
        "rx-opioids": 1,  # 1 + 0 + 0
        "rx-sedatives": 0,
        "rx-stimulants": 0,
        "other": 0,
    }


def test_panel_is_loinc_96841_2(instruments):
    taps = instruments["taps"]
    assert taps["code"][0]["code"] == "96841-2"
    taps1_codes = [i["code"][0]["code"] for i in taps["item"][1]["item"]]
    assert taps1_codes == ["96842-0", "88037-7", "75889-6", "96843-8", "96844-6"]
