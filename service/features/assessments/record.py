"""``POST /v1/assessments``: one screening or overdose-risk assessment from a JMS, stored as a
QuestionnaireResponse with its scored Observations, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import ResourceNotFoundError
from service.features.assessments.instruments import resolve_instrument
from service.features.people import Person, match_or_create_patient
from service.fhir.codes import (
    ADMINISTERED_AT_EXTENSION,
    intercept_extension,
    staff_reference,
)
from service.questionnaires.answers import response_from_answers
from service.questionnaires.result import ScoreResult
from service.storage.db import read_connection
from service.telemetry import traced_workflow
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext


@dataclass
class AssessmentInput:
    person: Person
    instrument: str
    answers: dict[str, Any]
    administered_by_name: str
    administered_by_role: str
    administered_by_id: str | None
    administered_at: str  # FHIR dateTime
    intercept: int
    location: str | None  # Location/<id> or Organization/<id>
    status: str


def _band(result: ScoreResult) -> dict[str, Any] | None:
    total = result.total
    if total is None or total.band is None:
        return None
    return {"code": total.band.code.code, "display": total.band.code.display}


def summary(result: ScoreResult | None) -> dict[str, Any]:
    if result is None:
        return {"score": None, "band": None, "subscores": [], "triage": None, "mismatches": []}
    total = result.total
    triage = None
    if result.triage is not None:
        triage = {
            "high_priority": result.triage.flagged,
            "result": result.triage.result.display or result.triage.result.code,
            "rule_version": result.triage.rule_version,
            "factors": [{"code": f.code, "display": f.display} for f in result.triage.factors],
        }
    return {
        "score": int(total.value) if total is not None and total.value is not None else None,
        "band": _band(result),
        "subscores": [
            {
                "item": s.link_id,
                "group": s.group_text,
                "score": int(s.value) if s.value is not None else None,
                "band": {"code": s.band.code.code, "display": s.band.code.display}
                if s.band
                else None,
            }
            for s in result.subscores
        ],
        "triage": triage,
        "mismatches": [
            {"item": m.link_id, "submitted": m.client_value, "computed": m.computed_value}
            for m in result.mismatches
        ],
    }


async def _observation_ids(conn: AsyncConnection, ctx: WorkflowContext, qr_id: str) -> list[str]:
    request = wf.parse_search_params(
        ctx, "Observation", [("derived-from", f"QuestionnaireResponse/{qr_id}")], strict=True
    )
    page = await wf.search_in(conn, ctx, request)
    return [m.id for m in page.matches]


@traced_workflow(
    "workflow.record_assessment", resource_type="QuestionnaireResponse", interaction="create"
)
async def record_assessment(
    ctx: WorkflowContext, data: AssessmentInput, *, idempotency_key: str | None, fingerprint: str
) -> tuple[int, dict[str, Any]]:
    assert ctx.principal is not None

    async def create(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        questionnaire = await resolve_instrument(conn, ctx, data.instrument)
        patient_id, _ = await match_or_create_patient(conn, ctx, data.person)
        organization = ctx.organization or ""
        author = staff_reference(
            organization=organization,
            staff_id=data.administered_by_id,
            name=data.administered_by_name,
            role=data.administered_by_role,
        )
        response = response_from_answers(
            questionnaire,
            data.answers,
            subject=f"Patient/{patient_id}",
            author=author,
            authored=data.administered_at,
            status=data.status,
        )
        extensions = [intercept_extension(data.intercept)]
        where = data.location or organization
        if where:
            extensions.append(
                {"url": ADMINISTERED_AT_EXTENSION, "valueReference": {"reference": where}}
            )
        response = {
            "resourceType": "QuestionnaireResponse",
            "extension": extensions,
            **{k: v for k, v in response.items() if k != "resourceType"},
        }
        created = await wf.create_in(conn, ctx, response)
        qr_id = created.stored.id
        result = ctx.outcomes.get(f"score:{qr_id}")
        root = ctx.base_url.removesuffix("/fhir")
        body = {
            "assessment_id": qr_id,
            "patient_id": patient_id,
            "instrument": questionnaire.get("id"),
            "questionnaire": f"{questionnaire.get('url')}|{questionnaire.get('version')}",
            "questionnaire_response": f"QuestionnaireResponse/{qr_id}",
            "observations": [f"Observation/{i}" for i in await _observation_ids(conn, ctx, qr_id)],
            "administered_at": data.administered_at,
            "intercept": data.intercept,
            **summary(result if isinstance(result, ScoreResult) else None),
            "links": {
                "fhir": f"{ctx.base_url}/QuestionnaireResponse/{qr_id}",
                "person": f"{root}/v1/people/{patient_id}/assessments",
            },
        }
        return 201, body

    return await idempotency.run_once(
        ctx, key=idempotency_key, fingerprint=fingerprint, work=create
    )


@traced_workflow(
    "workflow.person_assessments", resource_type="Observation", interaction="search", id_position=1
)
async def person_assessments(ctx: WorkflowContext, patient_id: str) -> list[dict[str, Any]]:
    """A person's assessments and results, newest first (only what the caller may see)."""
    async with read_connection(ctx.engine) as conn:
        await wf.read_in(conn, ctx, "Patient", patient_id)  # 404 unless visible
        request = wf.parse_search_params(
            ctx,
            "QuestionnaireResponse",
            [("patient", f"Patient/{patient_id}"), ("_sort", "-authored"), ("_count", "200")],
            strict=True,
        )
        page = await wf.search_in(conn, ctx, request)
        out = []
        for match in page.matches:
            qr = orjson.loads(match.raw or "{}")
            obs_request = wf.parse_search_params(
                ctx,
                "Observation",
                [("derived-from", f"QuestionnaireResponse/{match.id}"), ("_count", "100")],
                strict=True,
            )
            observations = [
                orjson.loads(o.raw or "{}")
                for o in (await wf.search_in(conn, ctx, obs_request)).matches
            ]
            out.append(
                {
                    "assessment_id": match.id,
                    "questionnaire": qr.get("questionnaire"),
                    "status": qr.get("status"),
                    "administered_at": qr.get("authored"),
                    "administered_by": (qr.get("author") or {}).get("display"),
                    "results": [
                        _observation_summary(o)
                        for o in observations
                        if o.get("status") != "entered-in-error"
                    ],
                }
            )
    if not out and page.total == 0:
        return []
    return out


def _observation_summary(observation: dict[str, Any]) -> dict[str, Any]:
    code = (observation.get("code") or {}).get("coding", [{}])[0]
    interpretation = (observation.get("interpretation") or [{}])[0].get("coding", [{}])[0]
    return {
        "observation": f"Observation/{observation.get('id')}",
        "code": code.get("code"),
        "display": code.get("display") or (observation.get("code") or {}).get("text"),
        "value": observation.get("valueInteger", observation.get("valueCodeableConcept")),
        "interpretation": interpretation.get("display") or interpretation.get("code"),
        "components": [
            {
                "code": ((c.get("code") or {}).get("coding") or [{}])[0].get("code"),
                "value": c.get("valueCodeableConcept", c.get("valueString", c.get("valueBoolean"))),
            }
            for c in observation.get("component", [])
        ],
    }


__all__ = ["AssessmentInput", "ResourceNotFoundError", "person_assessments", "record_assessment"]
