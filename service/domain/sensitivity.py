"""One place decides a resource's 42 CFR Part 2 sensitivity from its content.

Labelled (``meta.security``): confidentiality R, sensitivity SUD, policy 42CFRPart2 and the
refrain NORDSCLCD (no redisclosure without consent):

* QuestionnaireResponses of substance-use instruments (TAPS, AUDIT-C, DAST-10, the overdose
  checklist, and any Questionnaire tagged ``sud-instrument`` or coded with a known SUD LOINC);
* anything derived from, or focused on, a labelled resource (score Observations, referral Tasks);
* ServiceRequests for SUD treatment, MOUD, harm reduction, OEND or peer recovery support;
* naloxone dispenses to a known person and overdose-education Procedures;
* anything a client labels SUD/ETH/OPIOIDUD/ETHUD/42CFRPart2 itself.

Pure functions: the write rule (workflows/consents.py) supplies what they need to look up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
TAG_SYSTEM = "https://handoff.dev/fhir/CodeSystem/tags"

PART2_LABELS: tuple[dict[str, str], ...] = (
    {"system": CONFIDENTIALITY, "code": "R", "display": "restricted"},
    {
        "system": ACT_CODE,
        "code": "SUD",
        "display": "substance use disorder information sensitivity",
    },
    {"system": ACT_CODE, "code": "42CFRPart2", "display": "42 CFR Part2"},
    {
        "system": ACT_CODE,
        "code": "NORDSCLCD",
        "display": "no redisclosure without consent directive",
    },
)
SENSITIVE_CODES = frozenset({"SUD", "ETH", "OPIOIDUD", "ETHUD", "42CFRPart2"})
SUD_INSTRUMENT_LOINC = frozenset({"96841-2", "72109-2", "82666-9", "82667-7", "71942-7", "75626-2"})
SUD_INSTRUMENT_URLS = frozenset(
    {
        "https://handoff.dev/fhir/Questionnaire/taps",
        "https://handoff.dev/fhir/Questionnaire/audit-c",
        "https://handoff.dev/fhir/Questionnaire/dast-10",
        "https://handoff.dev/fhir/Questionnaire/overdose-risk",
    }
)
# SNOMED referral codes and our service keys that are SUD treatment or SUD-related services.
SUD_SERVICE_CODES = frozenset(
    {
        "310653000",
        "792901003",
        "792902005",
        "266707007",
        "401266006",
        "385989002",
        "720174008",
        "460831000124102",
        "461481000124109",
        "423416000",
        "moud-methadone",
        "moud-buprenorphine",
        "moud-naltrexone",
        "sud-treatment",
        "harm-reduction",
        "naloxone",
        "peer-support",
        "case-management",
        "oend",
    }
)
NALOXONE_RXNORM = frozenset(
    {
        "1725059",
        "1725064",
        "1870933",
        "2540703",
        "2540709",
        "1659929",
        "2589612",
        "2589618",
        "2673091",
        "2679504",
    }
)
OVERDOSE_RESPONSE = "overdose-response"


def is_labelled(resource: dict[str, Any] | None) -> bool:
    if not resource:
        return False
    return has_sensitive_code(
        label.get("code") for label in (resource.get("meta") or {}).get("security", [])
    )


def has_sensitive_code(codes: Iterable[Any]) -> bool:
    """Whether any of a resource's ``meta.security`` codes is a Part 2 label."""
    return any(code in SENSITIVE_CODES for code in codes)


def _codes(concepts: Iterable[Any]) -> set[str]:
    out: set[str] = set()
    for concept in concepts:
        if isinstance(concept, dict):
            out.update(str(c.get("code")) for c in concept.get("coding", []) if c.get("code"))
    return out


def is_sud_questionnaire(questionnaire: dict[str, Any]) -> bool:
    if questionnaire.get("url") in SUD_INSTRUMENT_URLS:
        return True
    tags = (questionnaire.get("meta") or {}).get("tag", [])
    if any(t.get("system") == TAG_SYSTEM and t.get("code") == "sud-instrument" for t in tags):
        return True
    codes = {str(c.get("code")) for c in questionnaire.get("code", []) if isinstance(c, dict)}
    return bool(codes & SUD_INSTRUMENT_LOINC) or is_labelled(questionnaire)


def content_is_sud(resource: dict[str, Any]) -> bool:
    """Labels that follow from the resource's own content (no look-ups)."""
    rtype = resource.get("resourceType")
    if rtype == "ServiceRequest":
        concepts = [
            resource.get("code"),
            *resource.get("orderDetail", []),
            *resource.get("category", []),
        ]
        return bool(_codes(concepts) & SUD_SERVICE_CODES)
    if rtype == "Procedure":
        return bool(_codes([resource.get("code")]) & SUD_SERVICE_CODES)
    if rtype == "MedicationDispense":
        return bool(_codes([resource.get("medicationCodeableConcept")]) & NALOXONE_RXNORM) and bool(
            resource.get("subject")
        )
    if rtype == "Observation":
        codes = _codes([resource.get("code")])
        if OVERDOSE_RESPONSE in codes:
            return bool(resource.get("subject"))  # anonymous reports carry no one's data
        return bool(codes & SUD_INSTRUMENT_LOINC)
    return False


def with_labels(resource: dict[str, Any], extra: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The resource with the Part 2 labels added (existing labels kept, none duplicated)."""
    meta = dict(resource.get("meta") or {})
    security = [dict(s) for s in meta.get("security", [])]
    present = {(s.get("system"), s.get("code")) for s in security}
    for label in (*PART2_LABELS, *extra):
        if (label["system"], label["code"]) not in present:
            security.append(dict(label))
            present.add((label["system"], label["code"]))
    meta["security"] = security
    out = dict(resource)
    out["meta"] = meta
    return out


def removed_labels(previous: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Labels of the previous version missing from the new one (the server puts them back)."""
    kept = {(s.get("system"), s.get("code")) for s in (new.get("meta") or {}).get("security", [])}
    return [
        s
        for s in (previous.get("meta") or {}).get("security", [])
        if (s.get("system"), s.get("code")) not in kept
    ]
