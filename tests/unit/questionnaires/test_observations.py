"""build_observations: R4 Observation dicts for scores and sub-scores."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation

from service.questionnaires.observations import build_observations
from service.questionnaires.scoring import score_response
from service.questionnaires.urls import CALCULATED_EXPRESSION_EXT

YES, NO = "LA33-6", "LA32-8"
SURVEY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "survey",
            "display": "Survey",
        }
    ]
}


def build(
    questionnaire: dict[str, Any], response: dict[str, Any], **overrides: Any
) -> list[dict[str, Any]]:
    arguments: dict[str, Any] = {
        "questionnaire": questionnaire,
        "response": response,
        "result": score_response(questionnaire, response),
        "response_reference": "QuestionnaireResponse/qr1",
        "subject": {"reference": "Patient/p1"},
        "performer": [{"reference": "Practitioner/screener"}],
        "effective": "2026-11-26T10:00:00Z",
    }
    arguments.update(overrides)
    return build_observations(**arguments)


def test_dast10_total_observation(instruments, respond):
    dast = instruments["dast-10"]
    # items 1, 2, 4 yes (3 points) and item 3 yes (0 points) -> 3, moderate
    response = respond(
        dast, {f"dast10-{n}": YES if n in (1, 2, 3, 4) else NO for n in range(1, 11)}
    )

    [observation] = build(dast, response)

    assert observation == {
        "resourceType": "Observation",
        "status": "final",
        "category": [SURVEY],
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "82667-7",
                    "display": "Total score [DAST-10]",
                }
            ],
            "text": "DAST-10 total score",
        },
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-26T10:00:00Z",
        "performer": [{"reference": "Practitioner/screener"}],
        "valueInteger": 3,
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "https://handoff.dev/fhir/CodeSystem/screening-interpretation",
                        "code": "dast10-moderate",
                        "display": "Moderate level",
                    }
                ],
                "text": "Moderate level",
            }
        ],
        "method": {"text": "DAST-10 (Drug Abuse Screening Test, 10 items), version 1.0.0"},
        "derivedFrom": [{"reference": "QuestionnaireResponse/qr1"}],
    }
    Observation.model_validate(observation)  # structurally valid R4(B)


def test_audit_c_total_uses_loinc_75626_2(instruments, respond):
    audit = instruments["audit-c"]
    response = respond(audit, {"auditc-1": "LA6270-8"})
    [observation] = build(audit, response)
    assert observation["code"]["coding"][0]["code"] == "75626-2"
    assert observation["valueInteger"] == 0


def test_taps_gives_one_observation_per_substance(instruments, respond):
    taps = instruments["taps"]
    response = respond(
        taps,
        {
            "sex": "male",
            "taps1-tobacco": "LA18934-2",
            "taps1-alcohol-men": "LA6270-8",
            "taps1-drugs": "LA6270-8",
            "taps1-rx": "LA6270-8",
            "taps2-tobacco-use": True,
            "taps2-tobacco-10cig": True,
            "taps2-tobacco-waking": True,
        },
    )
    observations = build(taps, response)
    assert len(observations) == 12
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations}
    tobacco = by_code["taps2-tobacco-score"]
    assert tobacco["valueInteger"] == 3
    assert tobacco["interpretation"][0]["coding"][0]["code"] == "taps-higher-risk"
    assert by_code["taps2-heroin-score"]["valueInteger"] == 0
    for observation in observations:
        Observation.model_validate(observation)


def test_status_security_and_reference_forms(instruments, respond):
    dast = instruments["dast-10"]
    response = respond(dast, {f"dast10-{n}": NO for n in range(1, 11)}, status="amended")
    label = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUD"}
    [observation] = build(
        dast,
        response,
        response_reference={"reference": "QuestionnaireResponse/qr1", "display": "DAST-10"},
        performer={"reference": "Practitioner/a"},
        effective=datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
        security=[label],
    )
    assert observation["status"] == "amended"
    assert observation["meta"] == {"security": [label]}
    assert observation["performer"] == [{"reference": "Practitioner/a"}]
    assert observation["effectiveDateTime"] == "2026-11-26T10:00:00+00:00"
    assert observation["derivedFrom"][0]["display"] == "DAST-10"


def test_no_performer_means_no_performer_element(instruments, respond):
    dast = instruments["dast-10"]
    response = respond(dast, {f"dast10-{n}": NO for n in range(1, 11)})
    [observation] = build(dast, response, performer=())
    assert "performer" not in observation


@pytest.mark.parametrize("status", ["entered-in-error", "stopped"])
def test_void_responses_give_no_observations(instruments, respond, status):
    dast = instruments["dast-10"]
    response = respond(dast, {}, status="in-progress")
    response["status"] = status
    assert build(dast, response) == []


def test_in_progress_gives_preliminary_and_skips_missing_scores(instruments, respond):
    audit = instruments["audit-c"]
    response = respond(audit, {"auditc-1": "LA18926-8"}, status="in-progress")
    [observation] = build(audit, response)
    assert observation["status"] == "preliminary"
    assert observation["valueInteger"] == 1


def test_naive_effective_datetime_is_refused(instruments, respond):
    dast = instruments["dast-10"]
    response = respond(dast, {})
    with pytest.raises(ValueError, match="timezone"):
        build(dast, response, effective=datetime(2026, 1, 1))


def test_fractional_score_becomes_a_quantity():
    questionnaire = {
        "resourceType": "Questionnaire",
        "url": "http://example.org/q",
        "version": "1",
        "status": "active",
        "item": [
            {"linkId": "d", "type": "decimal"},
            {
                "extension": [
                    {
                        "url": CALCULATED_EXPRESSION_EXT,
                        "valueExpression": {
                            "language": "text/fhirpath",
                            "expression": "%resource.item.where(linkId='d').answer.value / 2",
                        },
                    }
                ],
                "linkId": "score",
                "text": "Half",
                "type": "decimal",
            },
        ],
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "item": [{"linkId": "d", "answer": [{"valueDecimal": 3}]}],
    }
    [observation] = build(questionnaire, response)
    assert observation["valueQuantity"] == {
        "value": 1.5,
        "system": "http://unitsofmeasure.org",
        "code": "{score}",
    }
    assert observation["code"] == {"text": "Half"}
    assert "interpretation" not in observation
