"""Overdose education and naloxone distribution (OEND): the product vocabulary, our code
systems and the extensions OEND records carry (clinical-content.md §2.2).

Every OEND resource is recognizable from its content alone, which is what a labelling rule
(42 CFR Part 2) needs: a naloxone RxNorm code (``RESCUE_NALOXONE``) on MedicationDispense or
SupplyDelivery, ``EDUCATION_CODES`` on Procedure, ``OVERDOSE_RESPONSE`` on Observation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.fhir.codes import HANDOFF, SNOMED

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
SUPPLY_ITEM_TYPE = "http://terminology.hl7.org/CodeSystem/supply-item-type"

OEND_SYSTEM = f"{HANDOFF}/CodeSystem/oend"
SETTING_SYSTEM = f"{HANDOFF}/CodeSystem/oend-setting"
ROLE_SYSTEM = f"{HANDOFF}/CodeSystem/overdose-responder-role"
OUTCOME_SYSTEM = f"{HANDOFF}/CodeSystem/overdose-outcome"

SETTING_EXTENSION = f"{HANDOFF}/StructureDefinition/oend-setting"
EDUCATION_EXTENSION = f"{HANDOFF}/StructureDefinition/oend-education-given"
# R5 elements R4 lacks, as FHIR cross-version extensions: the RelatedPerson who received a kit
# (R4 MedicationDispense.receiver allows Patient or Practitioner only) and who was educated
# when it was not the subject (R5 Procedure.focus).
RECEIVER_R5_EXTENSION = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-MedicationDispense.receiver"
)
FOCUS_R5_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Procedure.focus"

KIT_UNIT = {"unit": "kit", "system": UCUM, "code": "{kit}"}


@dataclass(frozen=True)
class Product:
    rxnorm: str
    display: str  # the RxNorm name
    label: str  # what staff call it


# The JMS vocabulary: key -> RxNorm clinical drug (SCD). Names from the CDC Opioid CDS value set
# "naloxone-medications" (expansion 2025-02-24).
PRODUCTS: dict[str, Product] = {
    "naloxone-4mg-nasal": Product(
        "1725059", "naloxone hydrochloride 40 MG/ML Nasal Spray", "Naloxone 4 mg nasal spray"
    ),
    "naloxone-2mg-nasal": Product(
        "1870933", "naloxone hydrochloride 20 MG/ML Nasal Spray", "Naloxone 2 mg nasal spray"
    ),
    "naloxone-3mg-nasal": Product(
        "2673091", "naloxone hydrochloride 30 MG/ML Nasal Spray", "Naloxone 3 mg nasal spray"
    ),
    "naloxone-8mg-nasal": Product(
        "2540703", "naloxone hydrochloride 80 MG/ML Nasal Spray", "Naloxone 8 mg nasal spray"
    ),
    "naloxone-0.4mg-injection": Product(
        "1659929",
        "1 ML naloxone hydrochloride 0.4 MG/ML Injection",
        "Naloxone 0.4 mg/1 mL injection",
    ),
    "naloxone-0.4mg-syringe": Product(
        "2679504",
        "1 ML naloxone hydrochloride 0.4 MG/ML Prefilled Syringe",
        "Naloxone 0.4 mg/1 mL prefilled syringe",
    ),
    "naloxone-5mg-syringe": Product(
        "2589612",
        "0.5 ML naloxone hydrochloride 10 MG/ML Prefilled Syringe",
        "Naloxone 5 mg/0.5 mL prefilled syringe",
    ),
}

# Every single-ingredient naloxone product of that value set (the combinations with
# buprenorphine or pentazocine are treatment, not rescue): what counts as a kit, whoever
# recorded it and with whichever product code.
RESCUE_NALOXONE: dict[str, str] = {
    **{p.rxnorm: p.display for p in PRODUCTS.values()},
    "1725064": "naloxone hydrochloride 40 MG/ML Nasal Spray [Narcan]",
    "1870935": "naloxone hydrochloride 20 MG/ML Nasal Spray [Narcan]",
    "2540709": "naloxone hydrochloride 80 MG/ML Nasal Spray [Kloxxado]",
    "2589618": "0.5 ML naloxone hydrochloride 10 MG/ML Prefilled Syringe [Zimhi]",
    "2680741": "naloxone hydrochloride 16 MG/ML Nasal Spray [Rextovy]",
    "2637879": "naloxone hydrochloride 16 MG/ML Nasal Spray",
    "2685612": "naloxone hydrochloride 100 MG/ML Nasal Spray",
    "1191212": "naloxone hydrochloride 0.02 MG/ML Injectable Solution",
    "1191222": "naloxone hydrochloride 0.4 MG/ML Injectable Solution",
    "1191228": "naloxone hydrochloride 1 MG/ML Injectable Solution",
    "1191234": "1 ML naloxone hydrochloride 0.4 MG/ML Cartridge",
    "1191250": "2 ML naloxone hydrochloride 1 MG/ML Prefilled Syringe",
    "1855730": "0.4 ML naloxone hydrochloride 5 MG/ML Auto-Injector",
    "2596175": "0.4 ML naloxone hydrochloride 25 MG/ML Auto-Injector",
}

OEND_CONCEPTS: dict[str, str] = {
    "oend": "Overdose education and naloxone distribution",
    "overdose-response": "Overdose response with naloxone (reported)",
    "naloxone-doses": "Naloxone doses given",
    "responder-role": "Who gave the naloxone",
    "reporter-role": "Who reported the response",
    "naloxone-product": "Naloxone product used",
    "place": "Where it happened",
}

SNOMED_OPIOID_SAFETY = {
    "system": SNOMED,
    "code": "460831000124102",
    "display": "Counseling about opioid safety",
}
EDUCATION_CODES = (SNOMED_OPIOID_SAFETY, {"system": OEND_SYSTEM, "code": "oend"})
EDUCATION_CATEGORY = {"system": SNOMED, "code": "409073007", "display": "Education"}
OVERDOSE_RESPONSE = {
    "system": OEND_SYSTEM,
    "code": "overdose-response",
    "display": OEND_CONCEPTS["overdose-response"],
}

SETTINGS: dict[str, str] = {
    "at-release": "At release from custody",
    "in-custody": "In custody, before release",
    "court": "Court or pretrial services",
    "community-supervision": "Probation or parole",
    "community": "Community distribution (outreach, harm-reduction program)",
    "post-overdose-outreach": "Post-overdose outreach",
    "other": "Other",
}

RESPONDER_ROLES: dict[str, str] = {
    "lay-person": "Lay person (bystander)",
    "family-member": "Family member or friend",
    "peer": "Peer (person who uses drugs or peer recovery specialist)",
    "outreach-worker": "Outreach or harm-reduction worker",
    "program-staff": "Program or facility staff",
    "first-responder": "Police, fire or EMS",
    "self": "The person themself",
    "unknown": "Unknown",
}

OUTCOMES: dict[str, str] = {
    "survived": "Survived (responsive after naloxone)",
    "transported": "Transported to hospital",
    "died": "Died",
    "unknown": "Unknown",
}
ALIVE_OUTCOMES = frozenset({"survived", "transported"})

# Family member -> HL7 v3 RoleCode (the R4 RelatedPerson.relationship value set).
RELATIONSHIPS: dict[str, tuple[str, str]] = {
    "parent": ("PRN", "parent"),
    "mother": ("MTH", "mother"),
    "father": ("FTH", "father"),
    "spouse": ("SPS", "spouse"),
    "partner": ("DOMPART", "domestic partner"),
    "sibling": ("SIB", "sibling"),
    "child": ("CHILD", "child"),
    "grandparent": ("GRPRN", "grandparent"),
    "other-family": ("FAMMEMB", "family member"),
    "friend": ("FRND", "unrelated friend"),
    "roommate": ("ROOM", "roommate"),
}


def oend_coding(code: str) -> dict[str, Any]:
    return {"system": OEND_SYSTEM, "code": code, "display": OEND_CONCEPTS[code]}


def product_concept(key: str) -> dict[str, Any]:
    product = PRODUCTS[key]
    return {
        "coding": [{"system": RXNORM, "code": product.rxnorm, "display": product.display}],
        "text": product.label,
    }


def setting_extension(setting: str) -> dict[str, Any]:
    return {
        "url": SETTING_EXTENSION,
        "valueCoding": {"system": SETTING_SYSTEM, "code": setting, "display": SETTINGS[setting]},
    }


def is_rescue_naloxone(concept: Any) -> bool:
    """True when a CodeableConcept carries a single-ingredient naloxone RxNorm code."""
    if not isinstance(concept, dict):
        return False
    return any(
        isinstance(c, dict) and c.get("system") == RXNORM and c.get("code") in RESCUE_NALOXONE
        for c in concept.get("coding", [])
    )


def is_oend(concept: Any, code: str) -> bool:
    """True when a CodeableConcept carries ``code`` of our OEND code system."""
    if not isinstance(concept, dict):
        return False
    return any(
        isinstance(c, dict) and c.get("system") == OEND_SYSTEM and c.get("code") == code
        for c in concept.get("coding", [])
    )


def is_education(concept: Any) -> bool:
    if not isinstance(concept, dict):
        return False
    return any(
        isinstance(c, dict)
        and any(
            c.get("system") == e["system"] and c.get("code") == e["code"] for e in EDUCATION_CODES
        )
        for c in concept.get("coding", [])
    )


def _code_system(
    cid: str, url: str, name: str, title: str, concepts: dict[str, str], description: str
) -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": cid,
        "url": url,
        "version": "1.0.0",
        "name": name,
        "title": title,
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "description": description,
        "concept": [{"code": k, "display": v} for k, v in concepts.items()],
    }


def oend_code_systems() -> list[dict[str, Any]]:
    return [
        _code_system(
            "oend",
            OEND_SYSTEM,
            "HandoffOEND",
            "Overdose education and naloxone distribution",
            OEND_CONCEPTS,
            "The OEND procedure (SNOMED CT has no concept for it; records carry SNOMED "
            "460831000124102 too), the reported overdose response and its components.",
        ),
        _code_system(
            "oend-setting",
            SETTING_SYSTEM,
            "OENDSetting",
            "Where a naloxone kit was given",
            SETTINGS,
            "The setting of a naloxone distribution or overdose education.",
        ),
        _code_system(
            "overdose-responder-role",
            ROLE_SYSTEM,
            "OverdoseResponderRole",
            "Who gave naloxone in an overdose response, or reported it",
            RESPONDER_ROLES,
            "Roles of the people who respond to an overdose with naloxone.",
        ),
        _code_system(
            "overdose-outcome",
            OUTCOME_SYSTEM,
            "OverdoseOutcome",
            "Outcome of an overdose response",
            OUTCOMES,
            "What happened to the person after naloxone was given, as reported.",
        ),
    ]
