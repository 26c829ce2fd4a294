"""Canonical URLs: the extensions and code systems we read (FHIR core, SDC) or define (ours).

Everything we define lives under ``HANDOFF_FHIR_BASE``; change it in one place only, before the
first partner integration, because codes and extension URLs cannot be re-homed cheaply.
"""

from __future__ import annotations

from typing import Final

HANDOFF_FHIR_BASE: Final = "https://handoff.dev/fhir"

# --- Extensions we define (documented in docs/site-instruments.md) ---------------------------
#: On a calculated item, repeating: a named band of the score (complex: code, low, high, sex).
SCORE_BAND_EXT: Final = f"{HANDOFF_FHIR_BASE}/StructureDefinition/score-band"
#: On a calculated item: ``total`` (default) or ``subscore``.
SCORE_ROLE_EXT: Final = f"{HANDOFF_FHIR_BASE}/StructureDefinition/score-role"
#: On a Questionnaire: a versioned "flag if any condition holds" triage rule.
TRIAGE_RULE_EXT: Final = f"{HANDOFF_FHIR_BASE}/StructureDefinition/triage-rule"

# --- Code systems and value sets we define ----------------------------------------------------
OVERDOSE_RISK_FACTOR_CS: Final = f"{HANDOFF_FHIR_BASE}/CodeSystem/overdose-risk-factor"
SCREENING_ITEM_CS: Final = f"{HANDOFF_FHIR_BASE}/CodeSystem/screening-item"
SCREENING_ANSWER_CS: Final = f"{HANDOFF_FHIR_BASE}/CodeSystem/screening-answer"
SCREENING_INTERPRETATION_CS: Final = f"{HANDOFF_FHIR_BASE}/CodeSystem/screening-interpretation"

# --- FHIR core and SDC extensions we read -----------------------------------------------------
ORDINAL_VALUE_EXT: Final = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
ITEM_WEIGHT_EXT: Final = "http://hl7.org/fhir/StructureDefinition/itemWeight"
WEIGHT_EXTS: Final = (ITEM_WEIGHT_EXT, ORDINAL_VALUE_EXT)
VARIABLE_EXT: Final = "http://hl7.org/fhir/StructureDefinition/variable"
MIN_VALUE_EXT: Final = "http://hl7.org/fhir/StructureDefinition/minValue"
MAX_VALUE_EXT: Final = "http://hl7.org/fhir/StructureDefinition/maxValue"
HIDDEN_EXT: Final = "http://hl7.org/fhir/StructureDefinition/questionnaire-hidden"
ITEM_CONTROL_EXT: Final = "http://hl7.org/fhir/StructureDefinition/questionnaire-itemControl"
ITEM_CONTROL_CS: Final = "http://hl7.org/fhir/questionnaire-item-control"
SDC_BASE: Final = "http://hl7.org/fhir/uv/sdc/StructureDefinition"
CALCULATED_EXPRESSION_EXT: Final = f"{SDC_BASE}/sdc-questionnaire-calculatedExpression"
#: SDC features we do not evaluate; a Questionnaire using them is refused rather than misread.
UNSUPPORTED_EXTS: Final = (
    f"{SDC_BASE}/sdc-questionnaire-enableWhenExpression",
    f"{SDC_BASE}/sdc-questionnaire-answerExpression",
    f"{SDC_BASE}/sdc-questionnaire-candidateExpression",
)

# --- Terminologies --------------------------------------------------------------------------
LOINC: Final = "http://loinc.org"
ADMINISTRATIVE_GENDER_CS: Final = "http://hl7.org/fhir/administrative-gender"
OBSERVATION_CATEGORY_CS: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
OBSERVATION_INTERPRETATION_CS: Final = (
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
)
UCUM: Final = "http://unitsofmeasure.org"
FHIRPATH_LANGUAGE: Final = "text/fhirpath"
