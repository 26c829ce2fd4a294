"""The Questionnaire sketches in docs/site-instruments.md load and score as the page says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.questionnaires.check import check_questionnaire
from service.questionnaires.scoring import score_response
from service.questionnaires.validate import validate_response

DOC = Path(__file__).resolve().parents[3] / "docs" / "site-instruments.md"
YES, NO = "LA33-6", "LA32-8"


def sketches() -> dict[str, dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    found = {}
    for block in blocks:
        data = json.loads(block)
        if data.get("resourceType") == "Questionnaire":
            found[data["url"].rsplit("/", 1)[-1]] = data
    return found


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return sketches()


def test_every_sketch_loads(docs):
    assert set(docs) == {"uncope", "crafft"}
    for questionnaire in docs.values():
        assert check_questionnaire(questionnaire) == []


@pytest.mark.parametrize(
    ("yes", "total", "band"),
    [
        (set(), 0, "not-indicated"),
        ("u", 1, "not-indicated"),
        ("un", 2, "at-risk"),
        ("unc", 3, "likely-severe"),
        ("uncope", 6, "likely-severe"),
    ],
)
def test_uncope(docs, respond, yes, total, band):
    uncope = docs["uncope"]
    response = respond(uncope, {k: YES if k in yes else NO for k in "uncope"})
    assert validate_response(uncope, response) == []
    result = score_response(uncope, response)
    assert result.total is not None and result.total.band is not None
    assert (result.total.value, result.total.band.code.code) == (total, band)


def test_crafft_all_zero_asks_only_car(docs, respond):
    crafft = docs["crafft"]
    response = respond(crafft, {"a1": 0, "a2": 0, "a3": 0, "car": YES})
    assert validate_response(crafft, response) == []
    result = score_response(crafft, response)
    assert result.total is not None and result.total.band is not None
    assert (result.total.value, result.total.band.code.code) == (1, "lower-risk")

    with_rest = respond(crafft, {"a1": 0, "a2": 0, "a3": 0, "car": NO, "relax": YES})
    assert [i.code for i in validate_response(crafft, with_rest)] == ["invariant"]


def test_crafft_any_use_asks_all_six(docs, respond):
    crafft = docs["crafft"]
    answers: dict[str, Any] = {"a1": 0, "a2": 3, "a3": 0, "car": NO}
    assert [i.code for i in validate_response(crafft, respond(crafft, answers))] == ["required"]
    answers.update(relax=YES, alone=YES, forget=NO, family=NO, trouble=NO)
    response = respond(crafft, answers)
    assert validate_response(crafft, response) == []
    result = score_response(crafft, response)
    # car 0 + relax 1 + alone 1 + forget 0 + family 0 + trouble 0 = 2
    assert result.total is not None and result.total.band is not None
    assert (result.total.value, result.total.band.code.code) == (2, "high-risk")
