"""AUDIT-C: three items scored 0-4 (total 0-12). Positive at >= 4 for men and >= 3 for women
(Bradley 2003); without a recorded sex the lower cut-off (>= 3) applies."""

from __future__ import annotations

import pytest

from service.questionnaires.scoring import score_response
from service.questionnaires.validate import validate_response

# item 1: how often a drink
NEVER, MONTHLY_OR_LESS, TWO_FOUR_MONTH, TWO_THREE_WEEK, FOUR_PLUS_WEEK = (
    "LA6270-8",
    "LA18926-8",
    "LA18927-6",
    "LA18928-4",
    "LA18929-2",
)
# item 2: drinks on a typical day
ONE_TWO, THREE_FOUR, FIVE_SIX, SEVEN_NINE, TEN_PLUS = (
    "LA15694-5",
    "LA15695-2",
    "LA18930-0",
    "LA18931-8",
    "LA18932-6",
)
# item 3: six or more drinks on one occasion
LESS_THAN_MONTHLY, MONTHLY, WEEKLY, DAILY = "LA18933-4", "LA18876-5", "LA18891-4", "LA18934-2"

CASES = [
    # 2 + 0 + 0 = 2: negative whatever the sex
    ((TWO_FOUR_MONTH, ONE_TWO, NEVER), 2, {"male": "NEG", "female": "NEG", None: "NEG"}),
    # 2 + 0 + 1 = 3: the women's cut-off, below the men's
    (
        (TWO_FOUR_MONTH, ONE_TWO, LESS_THAN_MONTHLY),
        3,
        {"male": "NEG", "female": "POS", None: "POS"},
    ),
    # 3 + 0 + 1 = 4: the men's cut-off
    (
        (TWO_THREE_WEEK, ONE_TWO, LESS_THAN_MONTHLY),
        4,
        {"male": "POS", "female": "POS", None: "POS"},
    ),
    # 1 + 1 + 2 = 4 through other answers
    ((MONTHLY_OR_LESS, THREE_FOUR, MONTHLY), 4, {"male": "POS", "female": "POS", None: "POS"}),
    # 2 + 2 + 3 = 7
    ((TWO_FOUR_MONTH, FIVE_SIX, WEEKLY), 7, {"male": "POS", "female": "POS", None: "POS"}),
    # 4 + 4 + 4 = 12, the maximum
    ((FOUR_PLUS_WEEK, TEN_PLUS, DAILY), 12, {"male": "POS", "female": "POS", None: "POS"}),
    # 4 + 3 + 0 = 7
    ((FOUR_PLUS_WEEK, SEVEN_NINE, NEVER), 7, {"male": "POS", "female": "POS", None: "POS"}),
]


@pytest.mark.parametrize(("codes", "total", "bands"), CASES)
@pytest.mark.parametrize("sex", ["male", "female", None])
def test_audit_c_total_and_sex_specific_band(instruments, respond, codes, total, bands, sex):
    audit = instruments["audit-c"]
    response = respond(audit, dict(zip(["auditc-1", "auditc-2", "auditc-3"], codes, strict=True)))
    assert validate_response(audit, response) == []

    result = score_response(audit, response, sex=sex)

    assert result.total is not None
    assert result.total.value == total
    assert result.total.band is not None
    assert result.total.band.code.code == bands[sex]
    assert result.sex == sex


def test_never_drinking_skips_items_2_and_3_and_scores_0(instruments, respond):
    audit = instruments["audit-c"]
    response = respond(audit, {"auditc-1": NEVER})
    # items 2 and 3 are required, but disabled by "Never", so nothing is missing
    assert validate_response(audit, response) == []
    result = score_response(audit, response, sex="female")
    assert result.total is not None
    assert result.total.value == 0
    assert result.total.band is not None
    assert result.total.band.code.code == "NEG"


def test_answers_to_skipped_items_are_refused(instruments, respond):
    audit = instruments["audit-c"]
    response = respond(audit, {"auditc-1": NEVER, "auditc-2": TEN_PLUS, "auditc-3": DAILY})
    issues = validate_response(audit, response)
    assert sorted((i.code, i.expression[0]) for i in issues) == [
        ("invariant", "QuestionnaireResponse.item.where(linkId='auditc-2')"),
        ("invariant", "QuestionnaireResponse.item.where(linkId='auditc-3')"),
    ]
    # and they never count, even if the response is scored anyway
    result = score_response(audit, response, sex="male")
    assert result.total is not None
    assert result.total.value == 0


def test_sex_without_own_bands_uses_the_unqualified_cut_off(instruments, respond):
    audit = instruments["audit-c"]
    response = respond(
        audit, {"auditc-1": TWO_FOUR_MONTH, "auditc-2": ONE_TWO, "auditc-3": LESS_THAN_MONTHLY}
    )
    result = score_response(audit, response, sex="other")
    assert result.total is not None and result.total.band is not None
    assert (result.total.value, result.total.band.code.code) == (3, "POS")


def test_item_1_uses_loinc_68518_0(instruments):
    item = instruments["audit-c"]["item"][0]
    assert item["code"][0] == {
        "system": "http://loinc.org",
        "code": "68518-0",
        "display": "How often do you have a drink containing alcohol",
    }
