"""Fixtures for the pure Questionnaire engine: the built-in instruments and a response builder."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from service.questionnaires.answers import response_from_answers
from service.questionnaires.instruments import load_builtin_instruments

DATA = Path(__file__).resolve().parents[2] / "data"

Respond = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def instruments() -> dict[str, dict[str, Any]]:
    return load_builtin_instruments()


@pytest.fixture(scope="session")
def tcuds5() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DATA / "tcuds5-example-questionnaire.json").read_text(encoding="utf-8")
    )
    return data


@pytest.fixture
def respond() -> Respond:
    """``respond(questionnaire, {linkId: value}, status=...)`` -> QuestionnaireResponse dict."""

    def build(
        questionnaire: Mapping[str, Any], answers: Mapping[str, Any], status: str = "completed"
    ) -> dict[str, Any]:
        return response_from_answers(
            questionnaire,
            answers,
            subject="Patient/p1",
            author="Practitioner/screener",
            authored="2026-11-26T10:00:00Z",
            status=status,
        )

    return build
