"""OpenAPI component schemas for FHIR payloads, and the request rules the generated document
states as tightly as the server applies them.

FHIR models are not FastAPI body types (that would bloat the document and route errors through
FastAPI's own 422 format). Instead each resource type, datatype, backbone element and primitive
type gets one component, built from the tables the server validates with
(``service.fhir.schema``): element types and cardinality, required elements, choice types
(exactly one variant), required code bindings, reference targets, and the R4 regexes narrowed to
what the server refuses besides (NUL characters, impossible dates). Everything refers to these
components, so the document states the whole R4 structure once. Left out, though valid R4 and
accepted: extensions and ids below the resource level, ``_name`` primitive siblings and
contained resources (see ``_NOT_NESTED``).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel

from service.fhir import r4
from service.fhir.r4 import SUPPORTED_TYPES
from service.fhir.schema import Field, Kind, Spec, spec_for

# FHIR ids (R4 "id" datatype), as the routes' path parameters take them.
ID_PATTERN = r"^[A-Za-z0-9\-\.]{1,64}$"
# Datatype, backbone element and primitive components are named "R4.<definition path>" (a /v1
# model may share a FHIR datatype's name, e.g. Address); resources keep their type's name.
PREFIX = "R4."
_NO_NUL = "\\x00"  # no JSON text the server stores may hold a NUL (service.domain.text)
# Whitespace as Python's re sees it (the server's checks) and as JSON Schema's regex does.
_SPACE = "\\s\\x1c-\\x1f\\x85\\ufeff"
_TEXT_PATTERN = f"^[^{_NO_NUL}]*[^{_SPACE}{_NO_NUL}][^{_NO_NUL}]*$"
_YEAR = "[1-9][0-8][0-9]{2}"  # an offset never moves an instant out of the calendar
_TIME = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?"
_INSTANT = {
    "type": "string",
    "format": "date-time",
    "pattern": f"^{_YEAR}-[0-9]{{2}}-[0-9]{{2}}T{_TIME}(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])$",
}
_PARTIAL_DATE = {"type": "string", "pattern": f"^{_YEAR}(-(0[1-9]|1[0-2]))?$"}
_FULL_DATE = {"type": "string", "format": "date", "pattern": f"^{_YEAR}-[0-9]{{2}}-[0-9]{{2}}$"}
_URI = {"type": "string", "pattern": f"^[^{_SPACE}{_NO_NUL}]+$"}
_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}

# R4 primitive types as JSON Schema: the JSON type, the R4 regex (narrowed where the server
# refuses more than the regex: NUL characters, calendar dates, offsets past the calendar).
PRIMITIVES: dict[str, dict[str, Any]] = {
    "boolean": {"type": "boolean"},
    "integer": _INT32,
    "integer64": _INT32,
    "positiveInt": {**_INT32, "minimum": 1},
    "unsignedInt": {**_INT32, "minimum": 0},
    "decimal": {"type": "number"},
    "string": {"type": "string", "pattern": _TEXT_PATTERN},
    "markdown": {"type": "string", "pattern": _TEXT_PATTERN},
    "code": {"type": "string", "pattern": f"^[^{_SPACE}{_NO_NUL}]+( [^{_SPACE}{_NO_NUL}]+)*$"},
    "id": {"type": "string", "pattern": ID_PATTERN},
    "uri": _URI,
    "url": _URI,
    "canonical": _URI,
    "oid": {"type": "string", "pattern": "^urn:oid:[0-2](\\.(0|[1-9][0-9]*))+$"},
    "uuid": {"type": "string", "pattern": "^urn:uuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$"},
    "base64Binary": {
        "type": "string",
        "pattern": "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
        "minLength": 4,
    },
    "instant": _INSTANT,
    "date": {"anyOf": [_PARTIAL_DATE, _FULL_DATE]},
    "dateTime": {"anyOf": [_PARTIAL_DATE, _FULL_DATE, _INSTANT]},
    "time": {"type": "string", "pattern": f"^{_TIME}$"},
}
_NARRATIVE_DIV = {
    "type": "string",
    "description": "XHTML: a <div> in the XHTML namespace, without scripts or event attributes",
    "pattern": '^<div xmlns="http://www.w3.org/1999/xhtml">[A-Za-z0-9][A-Za-z0-9 .,]*</div>$',
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _reference_pattern(targets: frozenset[str] | None) -> str:
    types = sorted(targets) if targets else sorted(r4.R4_RESOURCE_TYPES)
    relative = f"({'|'.join(types)})/[A-Za-z0-9\\-.]{{1,64}}(/_history/[A-Za-z0-9\\-.]{{1,64}})?"
    if targets:
        return f"^{relative}$"
    return f"^({relative}|urn:uuid:[0-9a-f]{{8}}(-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}})$"


# What the document leaves out of datatypes and backbone elements, though R4 allows it and the
# server accepts it: element ids, extensions below the resource level and the "_name" siblings
# of primitives (anywhere). Each datatype would otherwise refer to Extension, whose value[x]
# refers to every datatype: a contract no generator (or reader) can work with.
_NOT_NESTED = frozenset({"id", "extension", "modifierExtension"})


class _Components:
    """Collects one component per datatype, backbone element and primitive type reached from
    the resources, so that each is written once and referenced everywhere."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def primitive(self, field: Field) -> dict[str, Any]:
        if field.binding is not None:
            return {"type": "string", "enum": list(field.binding.codes)}
        name = PREFIX + field.fhir_type
        if name not in self.schemas:
            self.schemas[name] = PRIMITIVES.get(field.fhir_type, PRIMITIVES["string"])
        return _ref(name)

    def model(self, model: type[BaseModel]) -> dict[str, Any]:
        spec = spec_for(model)
        name = PREFIX + ("Element" if spec.path == "FHIRPrimitiveExtension" else spec.path)
        if name not in self.schemas:
            self.schemas[name] = {}  # placed first: recursive types refer to themselves
            self.schemas[name] = self.object(spec, resource=None)
        return _ref(name)

    def field(self, spec: Spec, field: Field) -> dict[str, Any] | None:
        if field.kind is Kind.PRIMITIVE:
            one = self.primitive(field)
        elif field.kind is Kind.PRIMITIVE_EXTENSION:
            if field.is_list or field.model is None:
                return None  # "_given": nulls pair with values by position; not stated here
            one = self.model(field.model)
        elif field.kind is Kind.RESOURCE:
            if field.name == "contained":
                return None  # "#id" references and contained types: checked by the server
            one = {"type": "object", "required": ["resourceType"], "minProperties": 2}
        else:
            assert field.model is not None
            one = self.model(field.model)
            if field.fhir_type == "Reference" and field.targets:
                one = {
                    "allOf": [
                        one,
                        {
                            "properties": {
                                "reference": {"pattern": _reference_pattern(field.targets)}
                            }
                        },
                    ]
                }
            elif spec.path == "Narrative" and field.name == "div":
                one = _NARRATIVE_DIV
        if field.is_list:
            return {"type": "array", "minItems": 1, "items": one}
        return one

    def object(self, spec: Spec, *, resource: str | None) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        if resource is not None:
            properties["resourceType"] = {"type": "string", "enum": [resource]}
        for name, field in spec.fields.items():
            if field.choice is not None and name.startswith("_"):
                continue  # "_valueString": rare, and would square the choice rule below
            if field.kind is Kind.PRIMITIVE_EXTENSION or (resource is None and name in _NOT_NESTED):
                continue
            shape = self.field(spec, field)
            if shape is not None:
                properties[name] = shape
        if spec.path == "Narrative":
            properties["div"] = _NARRATIVE_DIV
        if spec.path == "Reference":
            properties["reference"] = {"type": "string", "pattern": _reference_pattern(None)}
        schema: dict[str, Any] = {"type": "object"}
        if resource is not None:
            schema.update(
                title=resource,
                description=f"A FHIR R4 {resource} resource in JSON.",
                externalDocs={"url": f"https://hl7.org/fhir/R4/{resource.lower()}.html"},
            )
        schema.update(properties=properties, additionalProperties=False)
        # A required primitive is required as such (its "_name" alone, with only extensions,
        # is valid R4 but would double the alternatives a generator has to combine).
        required = [e for e, _ in spec.required]
        if resource is not None:
            required.insert(0, "resourceType")
        if required:
            schema["required"] = required
        all_of: list[dict[str, Any]] = []
        for choice, variants in spec.choices.items():
            present = [v for v in variants if v in properties]
            # A choice type has one value: exactly one variant, or (when optional) none.
            one: list[dict[str, Any]] = [{"required": [v]} for v in present]
            if choice not in spec.required_choices and not spec.is_extension:
                one.append({"propertyNames": {"not": {"enum": present}}})
            all_of.append({"oneOf": one})
        if resource is None:
            schema["minProperties"] = 1  # ele-1: a value or children
        if all_of:
            schema["allOf"] = all_of
        return schema


def fhir_component_schemas() -> dict[str, Any]:
    """A component per resource type the server stores (and Bundle, OperationOutcome,
    CapabilityStatement), each stating the R4 rules the server checks on write, built from the
    same tables (``service.fhir.schema``): every element's type, cardinality, required elements,
    choice types, required bindings, reference targets; plus one per datatype, backbone element
    and primitive type they use."""
    components = _Components()
    resources: dict[str, Any] = {}
    for rtype in (
        *SUPPORTED_TYPES,
        "Bundle",
        "OperationOutcome",
        "CapabilityStatement",
        "Parameters",
    ):
        model = r4.r4_resource_model(rtype)
        assert model is not None
        resources[rtype] = components.object(spec_for(model), resource=rtype)
    # Errors are answers only, never written by a client: stated as this server sends them,
    # flat. The full R4 graph here (about 10,000 schema nodes once inlined) is what Swagger UI
    # resolves for every error response of an operation a person expands, which froze it.
    resources["OperationOutcome"] = OPERATION_OUTCOME
    return {**resources, **dict(sorted(components.schemas.items())), "JsonValue": JSON_VALUE}


OPERATION_OUTCOME: dict[str, Any] = {
    "type": "object",
    "title": "OperationOutcome",
    "description": "A FHIR R4 OperationOutcome as this server sends it: every problem found.",
    "externalDocs": {"url": "https://hl7.org/fhir/R4/operationoutcome.html"},
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "id": {"type": "string"},
        "meta": {"type": "object"},
        "extension": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"url": {"type": "string"}, "valueString": {"type": "string"}},
                "required": ["url"],
            },
        },
        "issue": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "severity": {
                        "type": "string",
                        "enum": ["fatal", "error", "warning", "information"],
                    },
                    "code": {"type": "string"},
                    "details": {"type": "object"},
                    "diagnostics": {"type": "string"},
                    "location": {"type": "array", "items": {"type": "string"}},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["severity", "code"],
            },
        },
    },
    "required": ["resourceType", "issue"],
}


# Any JSON value without a NUL character in its strings or keys (a JSON Patch value).
JSON_VALUE: dict[str, Any] = {
    "anyOf": [
        {"type": ["null", "boolean", "number"]},
        {"type": "string", "pattern": f"^[^{_NO_NUL}]*$"},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": f"^[^{_NO_NUL}]*$"},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        },
    ]
}


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


def parameters_without_nul(schema: dict[str, Any]) -> None:
    """A text parameter (path, query) never holds a NUL: the server refuses a URL with one."""
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                inner = parameter.get("schema", {})
                if parameter.get("in") in ("path", "query") and inner.get("type") == "string":
                    inner.setdefault("pattern", f"^[^{_NO_NUL}]*$")


def shared_responses(schema: dict[str, Any]) -> None:
    """Error answers that many operations document alike (the OperationOutcome of a 400, 401,
    404...) are written once under ``components/responses`` and referenced: a few hundred
    operations would otherwise repeat each of them."""
    uses: dict[str, list[dict[str, Any]]] = {}
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                if str(status)[:1] in ("4", "5") and "$ref" not in response:
                    key = json.dumps([str(status), response], sort_keys=True)
                    uses.setdefault(key, []).append(operation)
    shared = schema.setdefault("components", {}).setdefault("responses", {})
    counts: dict[str, int] = {}
    for key, operations in sorted(uses.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(operations) < 2:
            continue
        status, response = json.loads(key)
        counts[status] = counts.get(status, 0) + 1
        name = f"Error{status}" if counts[status] == 1 else f"Error{status}-{counts[status]}"
        shared[name] = response
        for operation in operations:
            operation["responses"][status] = {"$ref": f"#/components/responses/{name}"}


def _is_complex(component: Any) -> bool:
    return isinstance(component, dict) and (
        "properties" in component or component.get("type") == "object"
    )


def swagger_ui_view(schema: dict[str, Any]) -> dict[str, Any]:
    """The contract as Swagger UI shows it: each resource's elements, their datatypes by name.

    Swagger UI inlines every schema an operation uses when a person expands it; the R4 graph
    (a Task body is about 20,000 nodes once inlined: Reference, Identifier and the datatypes
    refer to one another) froze the page for minutes. Here an element of a complex datatype is
    shown as an object naming its datatype, with a pointer to the full contract
    (``/openapi.json``, unchanged, which tools and the conformance tests read).
    """
    view = copy.deepcopy(schema)
    components = view.get("components", {}).get("schemas", {})
    complex_names = {
        name for name, c in components.items() if name.startswith("R4.") and _is_complex(c)
    }

    def summary(ref: str) -> dict[str, Any]:
        name = ref.rsplit("/", 1)[-1]
        return {
            "type": "object",
            "description": f"{name} (its elements: the full contract, /openapi.json)",
        }

    def complex_ref(node: dict[str, Any]) -> str | None:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in complex_names:
            return ref
        parts = node.get("allOf")  # a datatype narrowed for one element (a reference's target)
        if isinstance(parts, list) and parts and isinstance(parts[0], dict):
            return complex_ref(parts[0])
        return None

    def trim(node: Any) -> Any:
        if isinstance(node, dict):
            ref = complex_ref(node)
            if ref is not None:
                return summary(ref)
            return {k: trim(v) for k, v in node.items()}
        if isinstance(node, list):
            return [trim(v) for v in node]
        return node

    # Swagger UI makes a request body's example from its schema when the contract gives none;
    # from the R4 schemas (choice types, patterns) that took minutes. A body without an example
    # starts from its resource type.
    for methods in view.get("paths", {}).values():
        for operation in methods.values():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            for media in (body or {}).get("content", {}).values():
                ref = media.get("schema", {}).get("$ref", "")
                if "example" in media or "examples" in media or not ref:
                    continue
                name = ref.rsplit("/", 1)[-1]
                if name in components and not name.startswith("R4."):
                    media["example"] = {"resourceType": name}
    for component in components.values():
        if not _is_complex(component):
            continue
        component["properties"] = trim(component.get("properties", {}))
        for key in ("allOf", "anyOf", "oneOf"):
            if key in component:
                component[key] = trim(component[key])
    return view
