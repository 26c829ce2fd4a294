"""Patient/$match (FHIR R4): the Patients the caller may read that may be the person described,
each with a score and the grade of the match (``match-grade`` extension on ``search``).

Candidates come from searches run as the caller (access filters and the disclosure policy
apply, and the request's AuditEvent names what was shown): each identifier given, and the
family or given name with the birth date. Grades:

* ``certain`` (1.0): an identifier (system and value) of the input;
* ``probable`` (0.9, 0.95 with the same gender): family name, a given name and birth date;
* ``possible`` (0.6, 0.7 with the same gender): birth date and either the family or a given
  name;

anything less is not returned. ``onlyCertainMatches`` keeps the certain ones only; ``count``
(default 10, at most 50) caps the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from service.errors import InvalidRequestError
from service.features.identity.parameters import parameters_of
from service.fhir.validate import validate_resource
from service.storage.db import read_connection
from service.storage.repository import StoredResource
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
MAX_COUNT = 50


@dataclass(frozen=True)
class MatchInput:
    patient: dict[str, Any]
    only_certain: bool
    count: int


def parse_parameters(body: Any) -> MatchInput:
    """The operation's input Parameters (R4 Patient-match: resource, onlyCertainMatches, count)."""
    patient = None
    only_certain, count = False, 10
    for param in parameters_of(body, "$match"):
        if not isinstance(param, dict):
            continue
        name = param.get("name")
        if name == "resource":
            patient = param.get("resource")
        elif name == "onlyCertainMatches":
            if not isinstance(param.get("valueBoolean"), bool):
                raise InvalidRequestError(
                    "onlyCertainMatches takes valueBoolean", expression=["Parameters.parameter"]
                )
            only_certain = param["valueBoolean"]
        elif name == "count":
            value = param.get("valueInteger")
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
                raise InvalidRequestError(
                    f"count takes valueInteger 1-{MAX_COUNT}", expression=["Parameters.parameter"]
                )
            count = value
    if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
        raise InvalidRequestError(
            "$match needs the parameter 'resource' holding a Patient",
            expression=["Parameters.parameter"],
        )
    validate_resource(patient, expected_type="Patient")
    return MatchInput(patient=patient, only_certain=only_certain, count=count)


def _names(patient: dict[str, Any]) -> tuple[set[str], set[str]]:
    families: set[str] = set()
    givens: set[str] = set()
    for name in patient.get("name", []):
        if isinstance(name, dict):
            if isinstance(name.get("family"), str):
                families.add(name["family"].strip().lower())
            givens.update(g.strip().lower() for g in name.get("given", []) if isinstance(g, str))
    return families, givens


def _identifiers(patient: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (str(i.get("system")), str(i.get("value")))
        for i in patient.get("identifier", [])
        if isinstance(i, dict) and i.get("system") and i.get("value")
    }


def score(wanted: dict[str, Any], candidate: dict[str, Any]) -> tuple[float, str] | None:
    """(score, grade) of ``candidate`` as the person ``wanted`` describes, or None."""
    if _identifiers(wanted) & _identifiers(candidate):
        return 1.0, "certain"
    families, givens = _names(wanted)
    c_families, c_givens = _names(candidate)
    same_birth = bool(wanted.get("birthDate")) and wanted.get("birthDate") == candidate.get(
        "birthDate"
    )
    same_gender = bool(wanted.get("gender")) and wanted.get("gender") == candidate.get("gender")
    family = bool(families & c_families)
    given = bool(givens & c_givens)
    if same_birth and family and given:
        return (0.95 if same_gender else 0.9), "probable"
    if same_birth and (family or given):
        return (0.7 if same_gender else 0.6), "possible"
    return None


def _searches(patient: dict[str, Any]) -> list[list[tuple[str, str]]]:
    out = [[("identifier", f"{s}|{v}")] for s, v in sorted(_identifiers(patient))[:5]]
    families, givens = _names(patient)
    birth = patient.get("birthDate")
    if isinstance(birth, str):
        out += [[("family", f), ("birthdate", birth)] for f in sorted(families)[:2]]
        out += [[("given", g), ("birthdate", birth)] for g in sorted(givens)[:3]]
    return out


async def match(ctx: WorkflowContext, data: MatchInput) -> dict[str, Any]:
    """The searchset Bundle of matches, best first."""
    searches = _searches(data.patient)
    if not searches:
        raise InvalidRequestError(
            "$match needs an identifier, or a name with a birthDate, in the Patient",
            expression=["Parameters.parameter.resource"],
        )
    found: dict[str, StoredResource] = {}
    async with read_connection(ctx.engine) as conn:
        for params in searches:
            request = wf.parse_search_params(
                ctx, "Patient", [*params, ("_count", str(MAX_COUNT))], strict=True
            )
            page = await wf.search_in(conn, ctx, request)
            for stored in page.matches:
                found.setdefault(stored.id, stored)
    scored = []
    for stored in found.values():
        if stored.raw is None:
            continue
        body = orjson.loads(stored.raw)
        graded = score(data.patient, body)
        if graded is None or (data.only_certain and graded[1] != "certain"):
            continue
        scored.append((graded[0], graded[1], stored.id, body))
    scored.sort(key=lambda s: (-s[0], s[2]))
    scored = scored[: data.count]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(scored),
        "entry": [
            {
                "fullUrl": f"{ctx.base_url}/Patient/{rid}",
                "resource": body,
                "search": {
                    "extension": [{"url": MATCH_GRADE, "valueCode": grade}],
                    "mode": "match",
                    "score": value,
                },
            }
            for value, grade, rid, body in scored
        ],
    }
