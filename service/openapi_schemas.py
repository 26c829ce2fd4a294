"""OpenAPI component schemas for FHIR payloads.

FHIR models are not FastAPI body types (that would bloat the document and route errors through
FastAPI's own 422 format), so each resource type gets a light schema that names the type and
links to its R4 definition; the server validates the full structure itself.
"""

from __future__ import annotations

from typing import Any

from service.fhir.r4 import SUPPORTED_TYPES


def fhir_component_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for rtype in (*SUPPORTED_TYPES, "Bundle", "OperationOutcome", "CapabilityStatement"):
        schemas[rtype] = {
            "type": "object",
            "title": rtype,
            "description": f"A FHIR R4 {rtype} resource in JSON.",
            "externalDocs": {"url": f"https://hl7.org/fhir/R4/{rtype.lower()}.html"},
            "properties": {
                "resourceType": {"type": "string", "enum": [rtype]},
                "id": {"type": "string"},
                "meta": {"type": "object"},
            },
            "required": ["resourceType"],
            "additionalProperties": True,
        }
    return schemas
