"""What the R4B models say about each JSON property, flattened for a fast walk over raw JSON.

pydantic in lax mode cannot tell a JSON string "1" from the number 1, accepts ``{}`` and ``[]``,
and skips a model's required/choice checks once any of its fields failed. The walk in
``service.fhir.validate`` checks those things on the JSON the client sent, driven by the tables
built here from the models' field annotations (built once per model class, then cached).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Final

from fhir_core.constraints import FHIR_PRIMITIVES_MAPS  # filled in by fhir_core.types
from fhir_core.types import FhirBase
from pydantic import BaseModel

from service.fhir import r4
from service.fhir.bindings import REQUIRED_BINDINGS, VALUE_SETS


class Kind(Enum):
    PRIMITIVE = "primitive"
    COMPLEX = "complex"  # a datatype or backbone element: a JSON object
    RESOURCE = "resource"  # any resource, chosen by its resourceType (contained, entry.resource)
    PRIMITIVE_EXTENSION = "primitive-extension"  # the "_name" sibling of a primitive


class JsonType(Enum):
    BOOLEAN = "boolean"
    INTEGER = "integer"
    NUMBER = "number"
    STRING = "string"


_JSON_TYPE_OF: Final[Mapping[str, JsonType]] = {
    "boolean": JsonType.BOOLEAN,
    "integer": JsonType.INTEGER,
    "integer64": JsonType.INTEGER,
    "positiveInt": JsonType.INTEGER,
    "unsignedInt": JsonType.INTEGER,
    "decimal": JsonType.NUMBER,
}

# R4B added these open-type choices to Extension.value[x]; they do not exist in R4 4.0.1.
_NOT_IN_R4: Final[Mapping[str, frozenset[str]]] = {
    "Extension": frozenset({"valueCodeableReference", "valueRatioRange"}),
}


# Where R4B allows more reference targets than R4 4.0.1 (all such elements of the supported types
# and datatypes, found by comparing the models with the R4 StructureDefinitions).
_R4_REFERENCE_TARGETS: Final[Mapping[str, frozenset[str]]] = {
    "Observation.subject": frozenset({"Patient", "Group", "Device", "Location"}),
}


@dataclass(frozen=True, slots=True)
class Binding:
    value_set: str
    codes: tuple[str, ...]  # in spec order, for messages
    allowed: frozenset[str]


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # JSON property name, e.g. "status", "_status", "for"
    element: str  # element name used in expressions: "_status" -> "status"
    kind: Kind
    is_list: bool
    fhir_type: str  # "code", "dateTime", "Identifier", "TaskRestriction", "Resource", ...
    json_type: JsonType | None  # for primitives
    model: type[BaseModel] | None  # for complex elements and primitive extensions
    binding: Binding | None
    # For Reference elements: the resource types it may point to; None means any.
    targets: frozenset[str] | None = None
    choice: str | None = None  # "value" for valueString and _valueString

    # A single string primitive without a binding or a format the walk checks (base64Binary,
    # the URI types): any non-empty JSON string will do.
    plain_string: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        plain = (
            self.kind is Kind.PRIMITIVE
            and self.json_type is JsonType.STRING
            and self.binding is None
            and not self.is_list
            and self.fhir_type not in WALK_CHECKED_FORMATS
        )
        object.__setattr__(self, "plain_string", plain)


# Primitive formats that fhir.resources lets through and the validation walk checks itself.
URI_TYPES = frozenset({"uri", "url", "canonical"})
WALK_CHECKED_FORMATS = URI_TYPES | {"base64Binary"}


@dataclass(frozen=True, slots=True)
class Spec:
    path: str  # element definition path, e.g. "Task", "Task.restriction", "Identifier"
    is_extension: bool
    fields: Mapping[str, Field]
    # (element, its "_element" sibling or None): at least one must be present
    required: tuple[tuple[str, str | None], ...]
    # choice name ("value") -> JSON names of its typed variants, and which choices are required
    choices: Mapping[str, tuple[str, ...]]
    required_choices: frozenset[str]


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """Strip Optional/Union-with-None and List; report whether a list was found."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, is_list
            annotation = args[0]
        elif origin is list:
            is_list = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, is_list


def _primitive_name(annotation: Any) -> str | None:
    try:
        name = FHIR_PRIMITIVES_MAPS.get(annotation)
    except TypeError:  # unhashable annotation
        name = None
    if name is not None:
        return str(name)
    if typing.get_origin(annotation) is Annotated:
        for meta in typing.get_args(annotation)[1:]:
            found = FHIR_PRIMITIVES_MAPS.get(type(meta))
            if found is not None:
                return str(found)
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        model = annotation.get_model_klass()
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model
    return None


def _is_resource_base(model: type[BaseModel]) -> bool:
    return model.__name__ in ("Resource", "DomainResource")


def _root_of(model: type[BaseModel]) -> type[BaseModel]:
    """The resource or datatype class that defines ``model`` (its module's namesake class)."""
    module = sys.modules[model.__module__]
    leaf = model.__module__.rsplit(".", 1)[-1]
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, BaseModel)
            and value.__name__.lower() == leaf
        ):
            return value
    return model


@functools.cache
def _backbone_paths(root: type[BaseModel]) -> Mapping[type[BaseModel], str]:
    """Definition path of every backbone class under ``root``.

    A backbone class is named after its defining element (``QuestionnaireItemEnableWhen`` is
    ``Questionnaire.item.enableWhen``). Content references reuse a class under another name
    (``Questionnaire.item.item``, ``ValueSet.compose.exclude``); the naming rule tells them apart,
    so bindings keyed by the defining path apply to every use.
    """
    paths: dict[type[BaseModel], str] = {root: root.__name__}
    proper: set[type[BaseModel]] = {root}
    queue: list[type[BaseModel]] = [root]
    while queue:
        parent = queue.pop(0)
        for info in parent.model_fields.values():
            extra = info.json_schema_extra
            if not (isinstance(extra, dict) and extra.get("element_property")):
                continue
            child = _model_of(_unwrap(info.annotation)[0])
            if child is None or child.__module__ != root.__module__ or child is root:
                continue
            element = info.alias or ""
            path = f"{paths[parent]}.{element}"
            is_proper = child.__name__ == parent.__name__ + element[:1].upper() + element[1:]
            if child not in paths or (is_proper and child not in proper):
                paths[child] = path
                if is_proper:
                    proper.add(child)
                queue.append(child)
    return paths


def definition_path(model: type[BaseModel]) -> str:
    root = _root_of(model)
    if model is root:
        return model.__name__
    return _backbone_paths(root).get(model, model.__name__)


@functools.cache
def _binding(path: str) -> Binding | None:
    value_set = REQUIRED_BINDINGS.get(path)
    if value_set is None:
        return None
    codes = VALUE_SETS[value_set]
    return Binding(value_set, codes, frozenset(codes))


@functools.cache
def spec_for(model: type[BaseModel]) -> Spec:
    path = definition_path(model)
    # The "_name" object of a primitive marks no field as an element; id and extension are.
    all_elements = model.__name__ == "FHIRPrimitiveExtension"
    excluded = _NOT_IN_R4.get(path, frozenset())
    fields: dict[str, Field] = {}
    required: list[tuple[str, str | None]] = []
    choices: dict[str, list[str]] = {}
    required_choices: set[str] = set()
    ext_alias = {
        name.removesuffix("__ext"): info.alias
        for name, info in model.model_fields.items()
        if name.endswith("__ext")
    }
    for name, info in model.model_fields.items():
        alias = info.alias or name
        annotation, is_list = _unwrap(info.annotation)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name.endswith("__ext"):
            ext_model = _model_of(annotation)
            if ext_model is None:
                continue
            fields[alias] = Field(
                name=alias,
                element=alias.removeprefix("_"),
                kind=Kind.PRIMITIVE_EXTENSION,
                is_list=is_list,
                fhir_type="Element",
                json_type=None,
                model=ext_model,
                binding=None,
            )
            continue
        if alias == "fhir_comments" or alias in excluded:
            continue
        if not (extra.get("element_property") or all_elements):
            continue
        primitive = _primitive_name(annotation)
        if primitive is not None:
            field = Field(
                name=alias,
                element=alias,
                kind=Kind.PRIMITIVE,
                is_list=is_list,
                fhir_type=primitive,
                json_type=_JSON_TYPE_OF.get(primitive, JsonType.STRING),
                model=None,
                binding=_binding(f"{path}.{alias}") if primitive == "code" else None,
            )
        else:
            child = _model_of(annotation)
            if child is None:
                raise TypeError(f"{model.__name__}.{name}: unsupported annotation {annotation!r}")
            targets = extra.get("enum_reference_types")
            field = Field(
                name=alias,
                element=alias,
                kind=Kind.RESOURCE if _is_resource_base(child) else Kind.COMPLEX,
                is_list=is_list,
                fhir_type=child.__name__,
                json_type=None,
                model=child,
                binding=None,
                targets=_R4_REFERENCE_TARGETS.get(f"{path}.{alias}")
                or (
                    frozenset(str(t) for t in targets)
                    if isinstance(targets, list) and targets and "Resource" not in targets
                    else None
                ),
            )
        fields[alias] = field
        choice = extra.get("one_of_many")
        if isinstance(choice, str):
            choices.setdefault(choice, []).append(alias)
            if extra.get("one_of_many_required"):
                required_choices.add(choice)
        elif extra.get("element_required") or info.is_required():
            required.append((alias, ext_alias.get(name)))
    # valueString and _valueString both belong to the choice value[x]
    choice_of = {name: group for group, names in choices.items() for name in names}
    for alias, field in list(fields.items()):
        group = choice_of.get(alias.removeprefix("_"))
        if group is not None:
            fields[alias] = dataclasses.replace(field, choice=group)
    # Every primitive may carry a "_name" sibling in FHIR JSON, but the R4B Extension model has
    # none for value[x] (``_valueString`` holding a translation is common in the spec itself).
    # The walk accepts them; outcome.py then ignores pydantic's extra_forbidden for them.
    ext_model = r4.primitive_extension_model()
    for field in list(fields.values()):
        sibling = f"_{field.name}"
        if field.kind is Kind.PRIMITIVE and sibling not in fields:
            fields[sibling] = Field(
                name=sibling,
                element=field.name,
                kind=Kind.PRIMITIVE_EXTENSION,
                is_list=field.is_list,
                fhir_type="Element",
                json_type=None,
                model=ext_model,
                binding=None,
                choice=field.choice,
            )
    return Spec(
        path=path,
        is_extension=path == "Extension",
        fields=fields,
        required=tuple(required),
        choices={k: tuple(v) for k, v in choices.items()},
        required_choices=frozenset(required_choices),
    )
