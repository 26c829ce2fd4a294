"""The measures as FHIR R4: read-only ``Measure`` resources (served from the definitions, with
canonical URLs and a version) and ``$evaluate-measure``'s summary ``MeasureReport``.

A MeasureReport group has the populations ``initial-population`` (proportion: the releases of
the denominator; count: the events; median: the releases with a first contact),
``denominator`` and ``numerator`` (proportion), ``measure-population`` (median), and the
``measureScore`` (the rate; for the median, hours). Each stratifier of the Measure has its
strata, with the same populations. A suppressed count (small cells, ``evaluate``) has no
``count`` but the extension ``http://hl7.org/fhir/StructureDefinition/data-absent-reason``
``masked``; its score is left out too.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from service.errors import InvalidRequestError, Issue, ResourceNotFoundError
from service.features.measures.definitions import (
    BY_ID,
    MEASURE_VERSION,
    MEASURES,
    STRATIFIERS,
    MeasureDef,
)
from service.features.measures.evaluate import MeasureQuery, evaluate
from service.workflows.context import WorkflowContext

SCORING_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-scoring"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
IMPROVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-improvement-notation"
SQL_LANGUAGE = "application/x-handoff-sql"  # criteria: SQL over the measure_release facts
_SCORING = {"proportion": "proportion", "count": "cohort", "median": "continuous-variable"}
_PUBLISHED = "2026-12-05"
STRATIFIER_TEXT = {
    "month": "Month of the release (UTC)",
    "facility": "Facility of the custody stay at release",
    "intercept": "Sequential Intercept Model intercept of the stay's first referral",
    "sex": "Administrative sex (Patient.gender)",
    "age_band": "Age band at release",
    "stay_length": "Length of stay under 72 hours or 72 hours or more",
    "release_type": "Planned or unplanned release",
}


def _concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _criteria(text: str | None, description: str) -> dict[str, Any]:
    return {"language": SQL_LANGUAGE, "expression": text or "true", "description": description}


def measure_resource(m: MeasureDef) -> dict[str, Any]:
    populations = []
    if m.scoring == "proportion":
        assert m.denominator_text is not None
        populations = [
            ("initial-population", m.denominator_text, m.denominator),
            ("denominator", m.denominator_text, m.denominator),
            ("numerator", m.numerator_text, m.numerator),
        ]
    elif m.scoring == "median":
        populations = [
            ("initial-population", m.numerator_text, m.numerator),
            ("measure-population", m.numerator_text, m.numerator),
            ("measure-observation", "Hours from release to the first contact", "r.contact_hours"),
        ]
    else:
        populations = [("initial-population", m.numerator_text, f"e.kind = '{m.event_kind}'")]
    stratifiers = STRATIFIERS if m.scoring != "count" else ("month", "facility", "intercept")
    return {
        "resourceType": "Measure",
        "id": m.id,
        "url": m.url,
        "version": MEASURE_VERSION,
        "name": "".join(part.capitalize() for part in m.id.split("-")),
        "title": m.title,
        "status": "active",
        "experimental": False,
        "date": _PUBLISHED,
        "publisher": "Handoff",
        "description": m.description,
        "scoring": _concept(SCORING_SYSTEM, _SCORING[m.scoring]),
        "improvementNotation": _concept(
            IMPROVEMENT_SYSTEM, "decrease" if m.group == "outcome" else "increase"
        ),
        "group": [
            {
                "population": [
                    {
                        "code": _concept(POPULATION_SYSTEM, code),
                        "description": text,
                        "criteria": _criteria(sql, text),
                    }
                    for code, text, sql in populations
                ],
                "stratifier": [
                    {
                        "code": {"text": name},
                        "description": STRATIFIER_TEXT[name],
                        "criteria": _criteria(name, STRATIFIER_TEXT[name]),
                    }
                    for name in stratifiers
                ],
            }
        ],
    }


def measures_bundle(base_url: str, params: dict[str, str]) -> dict[str, Any]:
    """``GET /fhir/Measure``: every Measure (``url``, ``_id`` and ``name`` narrow the list)."""
    found = [
        m
        for m in MEASURES
        if (not params.get("url") or params["url"] in (m.url, f"{m.url}|{MEASURE_VERSION}"))
        and (not params.get("_id") or m.id in params["_id"].split(","))
        and (not params.get("name") or params["name"].lower() in m.id)
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "entry": [
            {
                "fullUrl": f"{base_url}/Measure/{m.id}",
                "resource": measure_resource(m),
                "search": {"mode": "match"},
            }
            for m in found
        ],
    }


def measure_by_id(measure_id: str) -> MeasureDef:
    found = BY_ID.get(measure_id)
    if found is None:
        raise ResourceNotFoundError(
            f"Measure/{measure_id} is not known; GET /fhir/Measure lists the measures"
        )
    return found


def _day(value: str | None, name: str) -> date:
    if not value:
        raise InvalidRequestError(
            f"{name} is required (a date, YYYY-MM-DD: whole days, UTC)",
            issues=[Issue("error", "required", f"{name} is required", (name,))],
        )
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise InvalidRequestError(
            f"{name} must be a date, YYYY-MM-DD (got {value!r})",
            issues=[Issue("error", "invalid", f"{name} is not a date", (name,))],
        ) from None


def parse_operation(values: dict[str, str | None], measure_id: str | None) -> MeasureQuery:
    """The operation's parameters (from the query or a Parameters body)."""
    if values.get("subject"):
        raise InvalidRequestError(
            "subject is not supported: Handoff reports summaries of a population, not "
            "individual reports; leave subject out",
            issues=[Issue("error", "not-supported", "subject is not supported", ("subject",))],
        )
    reporter = values.get("reporter") or None
    if reporter is not None and not reporter.startswith("Organization/"):
        raise InvalidRequestError(
            "reporter is an Organization reference (Organization/<id>)",
            issues=[Issue("error", "invalid", "reporter is Organization/<id>", ("reporter",))],
        )
    wanted = measure_id or values.get("measure")
    ids: tuple[str, ...] = ()
    if wanted:
        key = wanted.split("|", 1)[0].rsplit("/", 1)[-1]
        ids = (measure_by_id(key).id,)
    return MeasureQuery(
        date_from=_day(values.get("periodStart"), "periodStart"),
        date_to=_day(values.get("periodEnd"), "periodEnd"),
        measures=ids,
        stratify=STRATIFIERS,
        organization=reporter,
    )


def parameters_values(body: Any) -> dict[str, str | None]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequestError(
            "The body is a FHIR Parameters resource: "
            '{"resourceType": "Parameters", "parameter": [{"name": "periodStart", ...}]}'
        )
    parameters = body.get("parameter")
    out: dict[str, str | None] = {}
    for p in parameters if isinstance(parameters, list) else []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            continue
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        if isinstance(value, dict):
            value = value.get("reference")
        out[p["name"]] = str(value) if value is not None else None
    return out


def _population(code: str, count: Any) -> dict[str, Any]:
    population: dict[str, Any] = {"code": _concept(POPULATION_SYSTEM, code)}
    if isinstance(count, int | float) and not isinstance(count, bool):
        population["count"] = int(count)
    else:
        population["extension"] = [{"url": DATA_ABSENT, "valueCode": "masked"}]
    return population


def _populations(m: dict[str, Any], cell: dict[str, Any]) -> list[dict[str, Any]]:
    if m["scoring"] == "proportion":
        return [
            _population("initial-population", cell["denominator"]),
            _population("denominator", cell["denominator"]),
            _population("numerator", cell["numerator"]),
        ]
    if m["scoring"] == "median":
        return [
            _population("initial-population", cell["numerator"]),
            _population("measure-population", cell["numerator"]),
        ]
    return [_population("initial-population", cell["numerator"])]


def _score(m: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any] | None:
    if m["scoring"] == "proportion" and cell["rate"] is not None:
        return {"value": cell["rate"]}
    if m["scoring"] == "median" and cell["median_hours"] is not None:
        return {
            "value": cell["median_hours"],
            "unit": "h",
            "system": "http://unitsofmeasure.org",
            "code": "h",
        }
    return None


def measure_report(report: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = {"population": _populations(m, m)}
    score = _score(m, m)
    if score is not None:
        group["measureScore"] = score
    names = list(dict.fromkeys(s["stratifier"] for s in m["strata"]))
    if names:
        group["stratifier"] = []
        for name in names:
            strata = []
            for cell in (s for s in m["strata"] if s["stratifier"] == name):
                stratum: dict[str, Any] = {
                    "value": {"text": cell["value"]},
                    "population": _populations(m, cell),
                }
                if (cell_score := _score(m, cell)) is not None:
                    stratum["measureScore"] = cell_score
                strata.append(stratum)
            group["stratifier"].append({"code": [{"text": name}], "stratum": strata})
    out: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": f"{m['url']}|{MEASURE_VERSION}",
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "period": {
            "start": f"{report['period']['from']}T00:00:00Z",
            "end": f"{report['period']['to']}T23:59:59Z",
        },
        "group": [group],
    }
    if report["organization"]:
        out["reporter"] = {"reference": report["organization"]}
    if report["suppression"]["applied"]:
        out["extension"] = [
            {
                "url": "https://handoff.dev/fhir/StructureDefinition/small-cell-suppression",
                "valueInteger": report["suppression"]["min_cell"],
            }
        ]
    return out


async def evaluate_measure(ctx: WorkflowContext, query: MeasureQuery) -> dict[str, Any]:
    """One MeasureReport for one measure; a Bundle (collection) of them for all."""
    report = await evaluate(ctx, query)
    reports = [measure_report(report, m) for m in report["measures"]]
    if len(query.measures) == 1:
        return reports[0]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in reports],
    }
