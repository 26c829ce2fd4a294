"""R4 Observation dicts for a scored QuestionnaireResponse.

- One Observation per score that has a value: ``code`` from the score item's ``code`` (LOINC
  total codes such as 75626-2 where the instrument has one), ``valueInteger`` (a fractional
  score becomes a ``valueQuantity`` with UCUM ``{score}``: R4 has no valueDecimal), the band
  in ``interpretation``.
- One Observation for a triage rule outcome: ``valueCodeableConcept`` = the result, a
  component for the result, one per triggering factor (``valueBoolean`` true) and one for the
  rule version, which is also in ``method.text``.

All carry category ``survey``, ``subject``, ``effectiveDateTime``, ``performer`` and
``derivedFrom`` the QuestionnaireResponse. Observations are not given ids: the caller stores
them. Security labels (42 CFR Part 2 / SUD) are the caller's choice, passed as ``security``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from service.questionnaires.result import Coding, Score, ScoreResult, TriageResult
from service.questionnaires.urls import OBSERVATION_CATEGORY_CS, SCREENING_ITEM_CS, UCUM

SURVEY_CATEGORY = {
    "coding": [{"system": OBSERVATION_CATEGORY_CS, "code": "survey", "display": "Survey"}]
}
TRIAGE_RESULT_CODE = Coding(SCREENING_ITEM_CS, "triage-result", "Triage result")
TRIAGE_RULE_VERSION_CODE = Coding(SCREENING_ITEM_CS, "triage-rule-version", "Triage rule version")
NOT_VALIDATED_NOTE = (
    "Risk factors present, flagged by a transparent local triage rule. "
    "This is not a validated risk score."
)

_STATUS = {"completed": "final", "amended": "amended", "in-progress": "preliminary"}


def build_observations(
    *,
    questionnaire: Mapping[str, Any],
    response: Mapping[str, Any],
    result: ScoreResult,
    response_reference: str | Mapping[str, Any],
    subject: Mapping[str, Any],
    performer: Mapping[str, Any] | Sequence[Mapping[str, Any]] = (),
    effective: str | datetime,
    security: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Observations for every computed score and the triage outcome (empty for a response
    that is ``entered-in-error`` or ``stopped``)."""
    status = _STATUS.get(str(response.get("status")))
    if status is None:
        return []
    common = _common(
        status=status,
        response_reference=response_reference,
        subject=subject,
        performer=performer,
        effective=effective,
        security=security,
    )
    method = _instrument_method(questionnaire)
    observations = [
        _score_observation(score, common=common, method=method)
        for score in result.scores
        if score.value is not None
    ]
    if result.triage is not None:
        observations.append(_triage_observation(result.triage, common))
    return observations


def _common(
    *,
    status: str,
    response_reference: str | Mapping[str, Any],
    subject: Mapping[str, Any],
    performer: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    effective: str | datetime,
    security: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    if isinstance(effective, datetime):
        if effective.tzinfo is None:
            raise ValueError("effective must be timezone-aware")
        effective = effective.isoformat()
    reference = (
        {"reference": response_reference}
        if isinstance(response_reference, str)
        else dict(response_reference)
    )
    performers = [performer] if isinstance(performer, Mapping) else list(performer)
    common: dict[str, Any] = {"resourceType": "Observation"}
    if security:
        common["meta"] = {"security": [dict(label) for label in security]}
    common["status"] = status
    common["category"] = [SURVEY_CATEGORY]
    common["subject"] = dict(subject)
    common["effectiveDateTime"] = effective
    if performers:
        common["performer"] = [dict(p) for p in performers]
    common["derivedFrom"] = [reference]
    return common


def _instrument_method(questionnaire: Mapping[str, Any]) -> dict[str, Any] | None:
    title = questionnaire.get("title") or questionnaire.get("name")
    if not isinstance(title, str):
        return None
    version = questionnaire.get("version")
    return {"text": f"{title}, version {version}" if version else title}


def _ordered(common: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Observation with elements in the R4 order (readers diff these by eye)."""
    order = (
        "resourceType",
        "meta",
        "status",
        "category",
        "code",
        "subject",
        "effectiveDateTime",
        "performer",
        "valueInteger",
        "valueQuantity",
        "valueCodeableConcept",
        "interpretation",
        "note",
        "method",
        "derivedFrom",
        "component",
    )
    merged = {**common, **{k: v for k, v in fields.items() if v is not None}}
    return {key: merged[key] for key in order if key in merged}


def _score_observation(
    score: Score, *, common: dict[str, Any], method: dict[str, Any] | None
) -> dict[str, Any]:
    code: dict[str, Any] = {}
    if score.codes:
        code["coding"] = [c.to_fhir() for c in score.codes]
    code["text"] = score.text or score.link_id
    value = score.value
    assert value is not None
    value_fields: dict[str, Any]
    if isinstance(value, int) or value == value.to_integral_value():
        value_fields = {"valueInteger": int(value)}
    else:
        value_fields = {
            "valueQuantity": {
                "value": float(Decimal(value)),
                "system": UCUM,
                "code": "{score}",
            }
        }
    interpretation = None
    if score.band is not None:
        band = score.band.code
        interpretation = [{"coding": [band.to_fhir()], "text": band.display or band.code}]
    return _ordered(common, code=code, interpretation=interpretation, method=method, **value_fields)


def _triage_observation(triage: TriageResult, common: dict[str, Any]) -> dict[str, Any]:
    result = {
        "coding": [triage.result.to_fhir()],
        "text": triage.result.display or triage.result.code,
    }
    components: list[dict[str, Any]] = [
        {"code": {"coding": [TRIAGE_RESULT_CODE.to_fhir()]}, "valueCodeableConcept": result},
    ]
    components.extend(
        {
            "code": {"coding": [factor.to_fhir()], "text": factor.display or factor.code},
            "valueBoolean": True,
        }
        for factor in triage.factors
    )
    components.append(
        {
            "code": {"coding": [TRIAGE_RULE_VERSION_CODE.to_fhir()]},
            "valueString": triage.rule_version,
        }
    )
    name = triage.rule_name or "Triage rule"
    return _ordered(
        common,
        code={"coding": [triage.code.to_fhir()], "text": triage.code.display or triage.code.code},
        valueCodeableConcept=result,
        note=[{"text": NOT_VALIDATED_NOTE}],
        method={"text": f"{name}, version {triage.rule_version}"},
        component=components,
    )
