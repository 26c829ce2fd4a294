"""OpenAPI component schemas for FHIR payloads, and the request rules the generated document
states as tightly as the server applies them.

FHIR models are not FastAPI body types (that would bloat the document and route errors through
FastAPI's own 422 format), so each resource type gets a light schema: its type, an id of the
allowed form, the elements R4 requires, the codes of its required top-level bindings, and a link
to its R4 definition; the server validates the full structure itself.
"""

from __future__ import annotations

from typing import Any

from service.fhir.bindings import REQUIRED_BINDINGS, VALUE_SETS
from service.fhir.r4 import SUPPORTED_TYPES, r4_resource_model

# FHIR ids (R4 "id" datatype), as the routes' path parameters take them.
ID_PATTERN = r"^[A-Za-z0-9\-\.]{1,64}$"
_TEXT = {"type": "string", "minLength": 1}
_OBJECT = {"type": "object", "minProperties": 1}
_EXTENSIONS = {"type": "array", "minItems": 1, "items": _OBJECT}
_CODINGS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "minProperties": 1,
        "properties": {
            "id": _TEXT,
            "extension": _EXTENSIONS,
            "system": _TEXT,
            "version": _TEXT,
            "code": _TEXT,
            "display": _TEXT,
            "userSelected": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
}
# R4 Meta; ele-1 (an element has a value or children) refuses an empty one.
_META = {
    "type": "object",
    "minProperties": 1,
    "properties": {
        "id": _TEXT,
        "extension": _EXTENSIONS,
        "versionId": {"type": "string", "pattern": ID_PATTERN},
        "lastUpdated": {"type": "string", "format": "date-time"},
        "source": _TEXT,
        "profile": {"type": "array", "minItems": 1, "items": _TEXT},
        "security": _CODINGS,
        "tag": _CODINGS,
    },
    "additionalProperties": False,
}
# Any other element: FHIR JSON has no nulls and no empty objects, arrays or strings (ele-1).
_ELEMENT = {
    "not": {
        "anyOf": [
            {"type": "null"},
            {"type": "object", "maxProperties": 0},
            {"type": "array", "maxItems": 0},
            {"type": "string", "maxLength": 0},
        ]
    }
}


def _json_kind(schema: dict[str, Any]) -> dict[str, Any] | None:
    """An element's JSON shape from the R4B model's schema: a typed primitive (its FHIR regex
    kept, pydantic's date formats dropped: FHIR dates may be partial), a non-empty object for a
    complex type, a non-empty array of either; None when the model does not say."""
    options = [o for o in schema.get("anyOf", [schema]) if o != {"type": "null"}]
    if len(options) != 1:
        return None
    option = options[0]
    kind = option.get("type")
    if kind is None and not option:
        return _OBJECT
    if kind == "array":
        items = _json_kind(option.get("items", {}))
        return {"type": "array", "minItems": 1, **({"items": items} if items else {})}
    if kind == "string":
        pattern = {"pattern": option["pattern"]} if "pattern" in option else {}
        return {"type": "string", "minLength": 1, **pattern}
    if kind in ("boolean", "integer", "number"):
        return {"type": kind}
    return None


def _rules(rtype: str) -> tuple[list[str], dict[str, Any], list[str]]:
    """The elements R4 requires of a type, the JSON shape of each element (with the codes of
    its single-valued required bindings), and the names of all its elements (with the
    ``_name`` siblings of primitives)."""
    model = r4_resource_model(rtype)
    if model is None:
        return [], {}, []
    required: list[str] = []
    elements: dict[str, Any] = {}
    names: list[str] = ["resourceType"]
    shapes = model.model_json_schema(by_alias=True).get("properties", {})
    for name, field in model.model_fields.items():
        element = field.alias or name
        if element == "fhir_comments":
            continue  # a fhir.resources addition, not an R4 element
        names.append(element)
        shape = _json_kind(shapes.get(element, {}))
        if shape is not None and element not in ("resourceType", "id", "meta"):
            elements[element] = shape
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if field.is_required() or extra.get("element_required"):
            required.append(element)
        value_set = REQUIRED_BINDINGS.get(f"{rtype}.{element}")
        if value_set is not None and "list" not in str(field.annotation).lower():
            elements[element] = {"type": "string", "enum": list(VALUE_SETS[value_set])}
    return sorted(required), elements, sorted(set(names))


def fhir_component_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for rtype in (*SUPPORTED_TYPES, "Bundle", "OperationOutcome", "CapabilityStatement"):
        required, elements, names = _rules(rtype)
        schemas[rtype] = {
            "type": "object",
            "title": rtype,
            "description": f"A FHIR R4 {rtype} resource in JSON.",
            "externalDocs": {"url": f"https://hl7.org/fhir/R4/{rtype.lower()}.html"},
            "properties": {
                "resourceType": {"type": "string", "enum": [rtype]},
                "id": {"type": "string", "pattern": ID_PATTERN},
                "meta": _META,
                **elements,
            },
            "required": ["resourceType", *required],
            "additionalProperties": _ELEMENT,
        }
        if names:
            schemas[rtype]["propertyNames"] = {"enum": names}
    return schemas


def parameters_without_null(schema: dict[str, Any]) -> None:
    """An optional header, query or cookie parameter is absent or a string, never null: FastAPI
    documents ``str | None`` as ``anyOf [string, null]``, from which a client (or schemathesis)
    sends the text ``null``, which the server refuses. Keep the non-null alternative."""
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                inner = parameter.get("schema", {})
                options = inner.get("anyOf")
                if parameter.get("in") == "path" or not isinstance(options, list):
                    continue
                kept = [o for o in options if o != {"type": "null"}]
                if len(kept) == 1 and len(options) == 2:
                    rest = {k: v for k, v in inner.items() if k != "anyOf"}
                    parameter["schema"] = {**kept[0], **rest}
