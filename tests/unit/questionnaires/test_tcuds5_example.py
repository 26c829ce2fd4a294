"""The TCU Drug Screen 5 site example (tests/data), scored end to end through the engine:
sum of 11 criteria, items 10 and 11 met by "yes" to either part; bands 0-1 / 2-3 / 4-5 / 6+."""

from __future__ import annotations

from typing import Any

import pytest

from service.questionnaires.check import check_questionnaire
from service.questionnaires.observations import build_observations
from service.questionnaires.scoring import score_response
from service.questionnaires.validate import validate_response

YES, NO = "LA33-6", "LA32-8"


def answers(criteria: set[int], tolerance: str = "", withdrawal: str = "") -> dict[str, Any]:
    """Yes to the listed criteria 1-9; tolerance/withdrawal name the parts answered yes."""
    out: dict[str, Any] = {f"tcuds5-{n:02d}": YES if n in criteria else NO for n in range(1, 10)}
    for item, parts in (("10", tolerance), ("11", withdrawal)):
        for part in "ab":
            out[f"tcuds5-{item}{part}"] = YES if part in parts else NO
    return out


@pytest.mark.parametrize(
    ("given", "total", "band"),
    [
        (answers(set()), 0, "sud-criteria-none"),  # nothing met
        (answers({1}), 1, "sud-criteria-none"),  # 1
        (answers({1}, tolerance="a"), 2, "sud-criteria-mild"),  # 1 + tolerance
        (answers({1, 2}, withdrawal="b"), 3, "sud-criteria-mild"),  # 2 + withdrawal
        (answers({1, 2, 3}, tolerance="b"), 4, "sud-criteria-moderate"),  # 3 + tolerance
        (answers({1, 2, 3, 4, 5}), 5, "sud-criteria-moderate"),  # 5
        (answers({1, 2, 3, 4, 5, 6}), 6, "sud-criteria-severe"),  # 6
        # 9 criteria + tolerance (both parts still count once) + withdrawal = 11, the maximum
        (answers(set(range(1, 10)), tolerance="ab", withdrawal="ab"), 11, "sud-criteria-severe"),
    ],
)
def test_tcuds5_end_to_end(tcuds5, respond, given, total, band):
    assert check_questionnaire(tcuds5) == []
    response = respond(tcuds5, given)
    assert validate_response(tcuds5, response) == []

    result = score_response(tcuds5, response)

    assert result.total is not None
    assert result.total.value == total
    assert result.total.band is not None
    assert result.total.band.code.code == band
    [observation] = build_observations(
        questionnaire=tcuds5,
        response=response,
        result=result,
        response_reference="QuestionnaireResponse/t1",
        subject={"reference": "Patient/p1"},
        performer=[],
        effective="2026-11-26T10:00:00Z",
    )
    assert observation["valueInteger"] == total
    assert observation["code"]["coding"][0]["code"] == "tcuds5-score"
    assert observation["interpretation"][0]["coding"][0]["code"] == band


def test_both_parts_of_item_10_count_once(tcuds5, respond):
    one = score_response(tcuds5, respond(tcuds5, answers(set(), tolerance="a")))
    both = score_response(tcuds5, respond(tcuds5, answers(set(), tolerance="ab")))
    assert one.total is not None and both.total is not None
    assert one.total.value == both.total.value == 1


def test_client_total_is_not_trusted(tcuds5, respond):
    response = respond(tcuds5, answers({1, 2}))
    response["item"].append({"linkId": "tcuds5-score", "answer": [{"valueInteger": 0}]})
    result = score_response(tcuds5, response)
    assert result.total is not None
    assert result.total.value == 2
    assert [(m.client_value, m.computed_value) for m in result.mismatches] == [(0, 2)]


def test_example_uses_placeholder_texts(tcuds5):
    texts = [i.get("text", "") for i in tcuds5["item"]]
    assert all("placeholder" in t.lower() or "PLACEHOLDER" in t for t in texts[:10])
