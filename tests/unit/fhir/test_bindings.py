"""The generated table of R4 required bindings, and that the walk applies every entry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import BaseModel

from service.fhir.bindings import REQUIRED_BINDINGS, VALUE_SETS
from service.fhir.r4 import SUPPORTED_TYPES, model_for
from service.fhir.schema import Kind, spec_for

ROOT = Path(__file__).resolve().parents[3]
VS = "http://hl7.org/fhir/ValueSet/"


@pytest.mark.parametrize(
    ("path", "value_set"),
    [
        ("Task.status", "task-status"),
        ("Task.intent", "task-intent"),
        ("Task.priority", "request-priority"),
        ("ServiceRequest.status", "request-status"),
        ("ServiceRequest.intent", "request-intent"),
        ("ServiceRequest.priority", "request-priority"),
        ("QuestionnaireResponse.status", "questionnaire-answers-status"),
        ("Questionnaire.status", "publication-status"),
        ("Questionnaire.item.type", "item-type"),
        ("Questionnaire.item.enableWhen.operator", "questionnaire-enable-operator"),
        ("Questionnaire.item.enableBehavior", "questionnaire-enable-behavior"),
        ("Observation.status", "observation-status"),
        ("Consent.status", "consent-state-codes"),
        ("Procedure.status", "event-status"),
        ("Patient.gender", "administrative-gender"),
        ("RelatedPerson.gender", "administrative-gender"),
        ("Practitioner.gender", "administrative-gender"),
        ("Identifier.use", "identifier-use"),
        ("ContactPoint.system", "contact-point-system"),
        ("ContactPoint.use", "contact-point-use"),
        ("HumanName.use", "name-use"),
        ("Address.use", "address-use"),
        ("Address.type", "address-type"),
        ("Bundle.type", "bundle-type"),
        ("Bundle.entry.request.method", "http-verb"),
        ("MedicationDispense.status", "medicationdispense-status"),
        ("SupplyDelivery.status", "supplydelivery-status"),
        ("AuditEvent.action", "audit-event-action"),
        ("AuditEvent.outcome", "audit-event-outcome"),
        ("CodeSystem.status", "publication-status"),
        ("CodeSystem.content", "codesystem-content-mode"),
        ("ValueSet.status", "publication-status"),
        ("Location.status", "location-status"),
        ("Location.mode", "location-mode"),
        ("Narrative.status", "narrative-status"),
        ("Quantity.comparator", "quantity-comparator"),
        ("Timing.repeat.periodUnit", "units-of-time"),
        ("Timing.repeat.durationUnit", "units-of-time"),
    ],
)
def test_required_binding_is_in_the_table(path: str, value_set: str) -> None:
    assert REQUIRED_BINDINGS[path] == VS + value_set


def test_code_lists_match_r4() -> None:
    assert VALUE_SETS[VS + "task-status"] == (
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    )
    assert VALUE_SETS[VS + "request-priority"] == ("routine", "urgent", "asap", "stat")
    assert VALUE_SETS[VS + "administrative-gender"] == ("male", "female", "other", "unknown")
    assert VALUE_SETS[VS + "questionnaire-answers-status"] == (
        "in-progress",
        "completed",
        "amended",
        "entered-in-error",
        "stopped",
    )
    assert VALUE_SETS[VS + "task-intent"][0] == "unknown"
    assert "directive" not in VALUE_SETS[VS + "task-intent"]
    # "question" is abstract (notSelectable) in the item-type code system
    assert "question" not in VALUE_SETS[VS + "item-type"]
    assert {"group", "display", "boolean", "choice", "open-choice"} <= set(
        VALUE_SETS[VS + "item-type"]
    )


def test_every_binding_names_a_known_value_set() -> None:
    assert set(REQUIRED_BINDINGS.values()) <= set(VALUE_SETS)
    assert all(VALUE_SETS[url] for url in VALUE_SETS)


def _applied_bindings(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    spec = spec_for(model)
    applied: set[str] = set()
    for field in spec.fields.values():
        if field.binding is not None:
            applied.add(f"{spec.path}.{field.name}")
        if field.kind is Kind.COMPLEX and field.model is not None:
            applied |= _applied_bindings(field.model, seen)
    return applied


def test_walk_applies_every_binding_reachable_from_the_supported_types() -> None:
    seen: set[type[BaseModel]] = set()
    applied: set[str] = set()
    for resource_type in SUPPORTED_TYPES:
        applied |= _applied_bindings(model_for(resource_type), seen)
    # Bundle is not stored, and ElementDefinition/DataRequirement/... are not reachable from
    # the stored types; every other entry must be applied somewhere.
    unreachable = {
        p
        for p in REQUIRED_BINDINGS
        if p.split(".")[0]
        in {
            "Bundle",
            "ElementDefinition",
            "DataRequirement",
            "ParameterDefinition",
            "TriggerDefinition",
            "Contributor",
            "RelatedArtifact",
        }
    }
    assert set(REQUIRED_BINDINGS) - unreachable <= applied
    assert applied <= set(REQUIRED_BINDINGS)


def test_generator_lists_every_supported_type() -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "tools" / "gen_r4_bindings.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert set(SUPPORTED_TYPES) <= set(gen.RESOURCE_TYPES)
