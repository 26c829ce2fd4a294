"""DAST-10 (Skinner 1982): 1 point per "yes" except item 3, where "no" scores 1.
Bands: 0 none, 1-2 low, 3-5 moderate, 6-8 substantial, 9-10 severe."""

from __future__ import annotations

from typing import Any

import pytest

from service.questionnaires.scoring import score_response
from service.questionnaires.validate import validate_response

YES, NO = "LA33-6", "LA32-8"


def dast_answers(yes: set[int]) -> dict[str, Any]:
    return {f"dast10-{n}": YES if n in yes else NO for n in range(1, 11)}


@pytest.mark.parametrize(
    ("yes", "total", "band"),
    [
        # yes to item 3 only: item 3 yes scores 0, every other item no scores 0 -> 0
        ({3}, 0, "dast10-none"),
        # items 1 and 3 yes: 1 + 0 -> 1
        ({1, 3}, 1, "dast10-low"),
        # items 1, 2, 3 yes: 1 + 1 + 0 -> 2
        ({1, 2, 3}, 2, "dast10-low"),
        # items 1-4 yes: 1 + 1 + 0 + 1 -> 3
        ({1, 2, 3, 4}, 3, "dast10-moderate"),
        # items 1-6 yes: 5 yes (not 3) -> 5
        ({1, 2, 3, 4, 5, 6}, 5, "dast10-moderate"),
        # items 1-7 yes: 6 yes (not 3) -> 6
        ({1, 2, 3, 4, 5, 6, 7}, 6, "dast10-substantial"),
        # items 1-9 yes: 8 yes (not 3) -> 8
        ({1, 2, 3, 4, 5, 6, 7, 8, 9}, 8, "dast10-substantial"),
        # every item yes: 9 yes (not 3) + item 3 yes scores 0 -> 9
        (set(range(1, 11)), 9, "dast10-severe"),
        # every item yes except 3: 9 yes + item 3 "no" scores 1 -> 10 (the maximum)
        (set(range(1, 11)) - {3}, 10, "dast10-severe"),
        # every item no: 0 + item 3 "no" scores 1 -> 1 (not 0: item 3 is reverse scored)
        (set(), 1, "dast10-low"),
    ],
)
def test_dast10_total_and_band(instruments, respond, yes, total, band) -> None:
    dast = instruments["dast-10"]
    response = respond(dast, dast_answers(yes))
    assert validate_response(dast, response) == []

    result = score_response(dast, response)

    assert result.total is not None
    assert result.total.value == total
    assert result.total.band is not None
    assert result.total.band.code.code == band


def test_item_3_is_reverse_scored(instruments, respond) -> None:
    dast = instruments["dast-10"]
    # only item 3 differs: "always able to stop" yes is the healthy answer
    able = score_response(dast, respond(dast, dast_answers({3})))
    unable = score_response(dast, respond(dast, dast_answers(set())))
    assert able.total is not None and unable.total is not None
    assert (able.total.value, unable.total.value) == (0, 1)


def test_total_carries_loinc_total_code(instruments, respond) -> None:
    dast = instruments["dast-10"]
    result = score_response(dast, respond(dast, dast_answers({1})))
    assert result.total is not None
    assert [(c.system, c.code) for c in result.total.codes] == [("http://loinc.org", "82667-7")]


def test_unanswered_item_is_required_when_completed(instruments, respond) -> None:
    dast = instruments["dast-10"]
    answers = dast_answers({1})
    del answers["dast10-7"]
    issues = validate_response(dast, respond(dast, answers))
    assert [(i.code, i.expression) for i in issues] == [
        ("required", ("QuestionnaireResponse.item.where(linkId='dast10-7')",))
    ]
