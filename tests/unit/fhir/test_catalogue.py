"""Every stored resource type is classified in one record (service.fhir.catalogue), and what
else a new type needs is decided: its R4 model, its search parameters, its routes, its
bindings. Adding a record without the rest fails here, saying what is missing."""

from __future__ import annotations

from service.fhir import catalogue
from service.fhir.r4 import SUPPORTED_TYPES, r4_resource_model
from service.openapi import generate
from service.search.params import BY_TYPE
from service.workflows.access import DIRECTORY_TYPES, PATIENT_DATA_TYPES
from service.workflows.consents import GUARDED_TYPES
from service.workflows.disclosure import REFERRAL_TYPES
from service.workflows.rules import default_rules
from tools import gen_r4_bindings


def test_the_catalogue_is_the_list_of_supported_types() -> None:
    assert tuple(r.name for r in catalogue.CATALOGUE) == SUPPORTED_TYPES
    assert len(set(SUPPORTED_TYPES)) == len(SUPPORTED_TYPES)


def test_every_type_has_an_r4_model_search_parameters_routes_and_bindings() -> None:
    paths = generate()["paths"]
    for name in SUPPORTED_TYPES:
        assert r4_resource_model(name) is not None, f"{name} is not an R4 resource type"
        assert BY_TYPE.get(name), f"{name} has no search parameters in search/params.py"
        assert f"/fhir/{name}/{{resource_id}}" in paths, f"{name} has no FHIR routes"
        assert name in gen_r4_bindings.RESOURCE_TYPES, (
            f"{name} is missing from tools/gen_r4_bindings.py: add it and regenerate"
        )
    assert set(BY_TYPE) <= set(SUPPORTED_TYPES), "search parameters for a type not stored"


def test_the_kinds_are_ones_the_code_implements() -> None:
    for record in catalogue.CATALOGUE:
        if record.tenancy == "referral":  # workflows/access.py has rules for these only
            assert record.name in ("Task", "ServiceRequest", "Appointment"), record
        if record.part2 == "guarded":  # all-or-nothing Part 2 needs a patient to consent
            assert record.tenancy == "patient-data", record
        if record.part2 == "referral":
            assert record.tenancy == "referral", record
        if record.server_written:
            assert not record.deletable, record


def test_the_rules_and_filters_read_the_catalogue() -> None:
    rules = default_rules()
    assert rules.server_written == set(catalogue.names(server_written=True)) == {"AuditEvent"}
    assert rules.undeletable == {"AuditEvent", "Consent"}
    assert rules.if_match_required == {"Task", "ServiceRequest"}
    assert {"Task", "ServiceRequest", "Appointment"} == REFERRAL_TYPES
    assert GUARDED_TYPES <= PATIENT_DATA_TYPES
    assert "Organization" in DIRECTORY_TYPES and "Patient" not in DIRECTORY_TYPES
