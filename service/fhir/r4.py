"""The one place that imports fhir.resources models.

fhir.resources 8 ships R5 at its top level; R4 JSON must be parsed with the R4B models
(``fhir.resources.R4B``), whose element names match R4 4.0.1 for every type we store. Importing
a model module costs ~275 ms the first time, so models are imported on first use and cached.
"""

from __future__ import annotations

import functools
import importlib
from typing import Final

from pydantic import BaseModel

from service.fhir.bindings import VALUE_SETS
from service.fhir.catalogue import CATALOGUE

_PACKAGE: Final = "fhir.resources.R4B"

# Resource types this server stores (and validates on write): one record each in the catalogue.
SUPPORTED_TYPES: Final[tuple[str, ...]] = tuple(record.name for record in CATALOGUE)

# Every concrete R4 4.0.1 resource type (the abstract Resource/DomainResource are not instances).
R4_RESOURCE_TYPES: Final[frozenset[str]] = frozenset(
    VALUE_SETS["http://hl7.org/fhir/ValueSet/resource-types"]
) - {"Resource", "DomainResource"}


def model_for(resource_type: str) -> type[BaseModel]:
    """The R4B model class of a supported resource type; raises KeyError for any other type."""
    if resource_type not in SUPPORTED_TYPES:
        raise KeyError(f"resource type {resource_type!r} is not supported")
    model = r4_resource_model(resource_type)
    assert model is not None  # every supported type exists in R4B
    return model


@functools.cache
def r4_resource_model(resource_type: str) -> type[BaseModel] | None:
    """The R4B model of any R4 resource type (e.g. a contained one); None if R4B lacks it.

    R4B dropped a few R4 types (EffectEvidenceSynthesis, MedicinalProduct*, ...); those and any
    non-R4 name give None.
    """
    if resource_type not in R4_RESOURCE_TYPES:
        return None
    try:
        module = importlib.import_module(f"{_PACKAGE}.{resource_type.lower()}")
    except ModuleNotFoundError:
        return None
    model = getattr(module, resource_type, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    return model


@functools.cache
def primitive_extension_model() -> type[BaseModel]:
    """The R4B model of a primitive's "_name" sibling (id and extension only)."""
    module = importlib.import_module(f"{_PACKAGE}.fhirprimitiveextension")
    model = module.FHIRPrimitiveExtension
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model
