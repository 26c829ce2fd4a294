"""Screenings and overdose-risk assessments: Questionnaire rules, server-side scoring and the
Observations derived from every QuestionnaireResponse, on every write path.

* A Questionnaire is checked (linkIds, answer sets, enableWhen, scoring definitions) before it
  is stored; a QuestionnaireResponse is validated against its Questionnaire.
* After a QuestionnaireResponse is written, its scores are recomputed from the Questionnaire
  (client totals are never trusted) and the derived Observations are created or, for a new
  version of the response, updated in the same transaction. Each derived Observation carries
  an identifier ``<QuestionnaireResponse id>/<score linkId>`` that makes it findable and stable.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.errors import BusinessRuleError, MethodNotAllowedError
from service.fhir.codes import referral_code_systems, sim_code_system, staff_role_code_system
from service.fhir.custody_codes import custody_code_systems
from service.fhir.followup_plan import default_plan, followup_code_systems
from service.fhir.oend_codes import oend_code_systems
from service.fhir.service_codes import directory_code_systems, service_value_set
from service.questionnaires.check import check_questionnaire
from service.questionnaires.instruments.loader import (
    builtin_code_systems,
    builtin_value_sets,
    load_builtin_instruments,
)
from service.questionnaires.observations import build_observations
from service.questionnaires.result import ScoreResult
from service.questionnaires.scoring import score_response
from service.questionnaires.validate import validate_response
from service.search.execute import run_search
from service.search.query import parse_search
from service.settings import Settings
from service.storage import repository as repo
from service.storage.db import write_transaction
from service.workflows import resources as wf
from service.workflows.canonicals import find_questionnaire
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet, WriteEvent, WrittenEvent

DERIVED_SYSTEM = "https://handoff.dev/fhir/sid/derived-observation"


async def _check_questionnaire(event: WriteEvent) -> None:
    if event.body is None:
        return
    issues = check_questionnaire(event.body)
    if issues:
        raise BusinessRuleError(
            f"The Questionnaire has {len(issues)} problem(s); the first: {issues[0].diagnostics}",
            issues=issues,
        )


async def _questionnaire_for(
    event: WriteEvent | WrittenEvent, body: dict[str, Any]
) -> dict[str, Any]:
    canonical = body.get("questionnaire")
    if not isinstance(canonical, str):
        raise BusinessRuleError(
            "A QuestionnaireResponse must name its Questionnaire (questionnaire = url|version)",
            expression=["QuestionnaireResponse.questionnaire"],
        )
    questionnaire = await find_questionnaire(event.conn, event.ctx, canonical)
    if questionnaire is None:
        raise BusinessRuleError(
            f"Questionnaire {canonical} is not known here; load it first (POST or PUT "
            "/fhir/Questionnaire) or use a built-in instrument (GET /v1/instruments)",
            expression=["QuestionnaireResponse.questionnaire"],
        )
    return questionnaire


async def _validate_response(event: WriteEvent) -> None:
    if event.body is None:
        return
    questionnaire = await _questionnaire_for(event, event.body)
    issues = validate_response(questionnaire, event.body)
    if issues:
        raise BusinessRuleError(
            f"{len(issues)} answer(s) do not fit the Questionnaire; the first: "
            f"{issues[0].diagnostics}",
            issues=issues,
        )


async def _subject_sex(conn: AsyncConnection, subject: Any) -> str | None:
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(ref, str) or not ref.startswith("Patient/"):
        return None
    stored = await repo.get_current(conn, "Patient", ref.split("/", 1)[1])
    if stored is None or stored.raw is None:
        return None
    gender = orjson.loads(stored.raw).get("gender")
    return gender if isinstance(gender, str) else None


def score_of(
    questionnaire: dict[str, Any], response: dict[str, Any], sex: str | None
) -> ScoreResult:
    return score_response(questionnaire, response, sex=sex)


async def _derive_observations(event: WrittenEvent) -> None:
    """Create or update the Observations of a QuestionnaireResponse version."""
    body = event.body
    stored = event.stored
    derived_ctx = dataclasses.replace(
        event.ctx, principal=None, on_behalf_of=event.ctx.organization
    )
    existing = await _derived(event.conn, derived_ctx, stored.id)
    produced: dict[str, dict[str, Any]] = {}
    if body is not None:
        questionnaire = await _questionnaire_for(event, body)
        sex = await _subject_sex(event.conn, body.get("subject"))
        result = score_of(questionnaire, body, sex)
        event.ctx.outcomes[f"score:{stored.id}"] = result
        observations = build_observations(
            questionnaire=questionnaire,
            response=body,
            result=result,
            response_reference=f"QuestionnaireResponse/{stored.id}",
            subject=body.get("subject") or {},
            performer=[body["author"]] if isinstance(body.get("author"), dict) else (),
            effective=body.get("authored") or stored.last_updated,
        )
        keys = [s.link_id for s in result.scores if s.value is not None]
        if result.triage is not None:
            keys.append("triage")
        for key, observation in zip(keys, observations, strict=True):
            observation["identifier"] = [{"system": DERIVED_SYSTEM, "value": f"{stored.id}/{key}"}]
            if result.mismatches and key in {m.link_id for m in result.mismatches}:
                mismatch = next(m for m in result.mismatches if m.link_id == key)
                observation["note"] = [
                    {
                        "text": f"The submitted value {mismatch.client_value} differs from the "
                        f"value computed by the server ({mismatch.computed_value}); the "
                        "computed value is recorded."
                    }
                ]
            produced[key] = observation
    for key, observation in produced.items():
        current = existing.pop(key, None)
        if current is None:
            await wf.create_in(event.conn, derived_ctx, observation)
        else:
            observation["id"] = current["id"]
            await wf.update_in(
                event.conn,
                derived_ctx,
                "Observation",
                current["id"],
                observation,
                if_match=int(current["meta"]["versionId"]),
            )
    # Scores the new version no longer produces (or a deleted response): withdraw them.
    for current in existing.values():
        if current.get("status") == "entered-in-error":
            continue
        withdrawn = dict(current, status="entered-in-error")
        await wf.update_in(
            event.conn,
            derived_ctx,
            "Observation",
            current["id"],
            withdrawn,
            if_match=int(current["meta"]["versionId"]),
        )


async def _derived(
    conn: AsyncConnection, ctx: WorkflowContext, response_id: str
) -> dict[str, dict[str, Any]]:
    request = parse_search(
        "Observation",
        [("derived-from", f"QuestionnaireResponse/{response_id}")],
        strict=True,
        default_count=1000,
        max_count=1000,
    )
    page = await run_search(conn, request, base_url=ctx.base_url)
    out: dict[str, dict[str, Any]] = {}
    for match in page.matches:
        body = orjson.loads(match.raw or "{}")
        for ident in body.get("identifier", []):
            if ident.get("system") == DERIVED_SYSTEM:
                out[str(ident["value"]).split("/", 1)[1]] = body
    return out


def register(rules: RuleSet) -> None:
    for resource_type in ("Questionnaire", "CodeSystem", "ValueSet", "PlanDefinition"):
        rules.on_write(resource_type, _builtin_is_read_only)
    rules.on_write("Questionnaire", _check_questionnaire)
    rules.on_write("QuestionnaireResponse", _validate_response)
    rules.on_written("QuestionnaireResponse", _derive_observations)


def builtin_resources() -> list[dict[str, Any]]:
    """The instruments, CodeSystems and ValueSets the service ships and maintains."""
    return [
        *load_builtin_instruments().values(),
        *builtin_code_systems(),
        *builtin_value_sets(),
        sim_code_system(),
        staff_role_code_system(),
        *referral_code_systems(),
        *oend_code_systems(),
        *directory_code_systems(),
        service_value_set(),
        *custody_code_systems(),
        default_plan(),
        *followup_code_systems(),
    ]


@functools.cache
def _builtin_keys() -> frozenset[tuple[str, str]]:
    return frozenset((r["resourceType"], r["id"]) for r in builtin_resources())


async def _builtin_is_read_only(event: WriteEvent) -> None:
    """Clients may not change what the service ships: its scoring and codes follow the shipped
    definitions, and ``ensure_builtin_content`` would put them back at the next start."""
    if event.ctx.principal is None or (event.resource_type, event.resource_id) not in (
        _builtin_keys()
    ):
        return
    raise MethodNotAllowedError(
        f"{event.resource_type}/{event.resource_id} is built-in content, maintained by the "
        f"service: read it, or publish your own {event.resource_type} with its own id and url",
        allow=["GET"],
    )


async def ensure_builtin_content(engine: AsyncEngine, settings: Settings, rules: RuleSet) -> None:
    """Load the built-in instruments, CodeSystems and ValueSets (idempotent, replica-safe).

    They are stored with their own ids (``Questionnaire/taps``), and replaced only when the
    shipped definition changed (a new version of the file). Clients cannot change them.
    """
    ctx = WorkflowContext(
        engine=engine, settings=settings, base_url="", request_id="builtin", rules=rules
    )
    async with write_transaction(engine) as conn:
        await repo.lock_key(conn, "builtin-content")
        for resource in builtin_resources():
            rtype, rid = resource["resourceType"], resource["id"]
            current = await repo.get_current(conn, rtype, rid)
            if current is not None and current.raw is not None:
                stored = orjson.loads(current.raw)
                stored.pop("meta", None)
                shipped = {k: v for k, v in resource.items() if k != "meta"}
                if stored == shipped:
                    continue
            await wf.update_in(
                conn,
                ctx,
                rtype,
                rid,
                dict(resource),
                if_match=current.version_id if current and not current.deleted else None,
            )


def canonical_query(url: str, version: str | None) -> str:
    return urlencode([("url", url)] + ([("version", version)] if version else []))
