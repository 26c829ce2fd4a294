"""The R4B model choke point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.fhir.r4 import (
    R4_RESOURCE_TYPES,
    SUPPORTED_TYPES,
    model_for,
    r4_resource_model,
)
from tests.unit.fhir.samples import task

ROOT = Path(__file__).resolve().parents[3]


def test_supported_types() -> None:
    assert SUPPORTED_TYPES == (
        "Patient",
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "HealthcareService",
        "Location",
        "Questionnaire",
        "QuestionnaireResponse",
        "Observation",
        "ServiceRequest",
        "Task",
        "Procedure",
        "Consent",
        "AuditEvent",
        "CodeSystem",
        "ValueSet",
        "MedicationDispense",
        "Medication",
        "SupplyDelivery",
        "RelatedPerson",
        "Subscription",
        "Encounter",
        "Appointment",
        "PlanDefinition",
        "Communication",
    )
    assert set(SUPPORTED_TYPES) <= R4_RESOURCE_TYPES


@pytest.mark.parametrize("resource_type", SUPPORTED_TYPES)
def test_model_for_gives_the_r4b_model(resource_type: str) -> None:
    model = model_for(resource_type)
    assert model.__name__ == resource_type
    assert model.__module__ == f"fhir.resources.R4B.{resource_type.lower()}"
    assert model_for(resource_type) is model


def test_r4b_task_accepts_r4_elements_the_r5_model_rejects() -> None:
    body = task()
    assert "performerType" in body and "reasonCode" in body
    model_for("Task").model_validate(body)


@pytest.mark.parametrize("resource_type", ["Bundle", "EpisodeOfCare", "Gizmo", "task"])
def test_model_for_refuses_other_types(resource_type: str) -> None:
    with pytest.raises(KeyError):
        model_for(resource_type)


def test_any_r4_type_can_be_had_for_contained_resources() -> None:
    model = r4_resource_model("EpisodeOfCare")
    assert model is not None and model.__module__ == "fhir.resources.R4B.episodeofcare"
    assert r4_resource_model("Gizmo") is None
    assert r4_resource_model("SubscriptionTopic") is None  # R4B/R5 only, not R4
    assert r4_resource_model("EffectEvidenceSynthesis") is None  # R4 only, absent from R4B


def test_models_are_imported_on_first_use_only() -> None:
    code = (
        "import sys\n"
        "import service.fhir.validate, service.fhir.outcome\n"
        "loaded = [m for m in sys.modules if m.startswith('fhir.resources.R4B.')]\n"
        "assert 'fhir.resources.R4B.task' not in loaded, loaded\n"
        "from service.fhir.r4 import model_for\n"
        "model_for('Task')\n"
        "assert 'fhir.resources.R4B.task' in sys.modules\n"
        "assert 'fhir.resources.R4B.patient' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
