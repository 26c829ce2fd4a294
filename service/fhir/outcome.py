"""OperationOutcome bodies, and the mapping of pydantic errors to FHIR issues."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from pydantic import ValidationError

from service.errors import Issue
from service.fhir import r4
from service.fhir.schema import Kind, Spec, spec_for

# Carries the request id on every OperationOutcome; also put in ``id`` when it is a valid FHIR id.
REQUEST_ID_EXTENSION: Final = "urn:handoff:request-id"

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_ELEMENT_NAME = re.compile(r"_?[a-z][A-Za-z0-9]*")
_MAX_INPUT_SHOWN = 80
_QUOTED = re.compile(r"'([A-Za-z0-9]+)'")
_FHIR_REGEX: Final = {
    "code": re.compile(r"[^ \t\r\n]+([ \t\r\n][^ \t\r\n]+)*"),
    "string": re.compile(r"[^\x0b\x0c]+"),
    "markdown": re.compile(r"[^\x0b\x0c]+"),
}

_REQUIRED_ERRORS: Final = frozenset({"missing", "model_field_validation.missing"})
_STRUCTURE_ERRORS: Final = frozenset(
    {
        "extra_forbidden",
        "model_validation_format",
        "model_type",
        "model_attributes_type",
        "dataclass_type",
        "is_instance_of",
        "none_required",
    }
)


def operation_outcome(issues: Sequence[Issue], *, request_id: str | None = None) -> dict[str, Any]:
    """An R4 OperationOutcome (JSON-ready dict) for ``issues``."""
    outcome: dict[str, Any] = {"resourceType": "OperationOutcome"}
    if request_id:
        if _FHIR_ID.fullmatch(request_id):
            outcome["id"] = request_id
        outcome["extension"] = [{"url": REQUEST_ID_EXTENSION, "valueString": request_id}]
    entries: list[dict[str, Any]] = []
    for issue in issues:
        entry: dict[str, Any] = {"severity": issue.severity, "code": issue.code}
        if issue.diagnostics:
            entry["diagnostics"] = issue.diagnostics
        if issue.expression:
            entry["expression"] = list(issue.expression)
        entries.append(entry)
    # R4 requires at least one issue (OperationOutcome.issue is 1..*).
    outcome["issue"] = entries or [
        {"severity": "information", "code": "informational", "diagnostics": "ok"}
    ]
    return outcome


def issues_from_validation_error(exc: ValidationError, resource_type: str) -> list[Issue]:
    """Map each pydantic error of an R4B model to an Issue with a FHIRPath expression."""
    root: Spec | None = None
    model = r4.r4_resource_model(resource_type)
    if model is not None:
        root = spec_for(model)
    issues: list[Issue] = []
    for error in exc.errors(include_url=False):
        kind = error["type"]
        expression, fhir_type, known = _expression(resource_type, root, error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        if kind == "extra_forbidden" and known:
            continue  # valid FHIR JSON the R4B model lacks (``_valueString`` in Extension)
        if kind == "string_pattern_mismatch" and _matches_fhir_regex(fhir_type, value):
            continue
        choice = _choice_name(message) if kind == "value_error" else None
        if choice is not None:
            # fhir.resources' check of a choice type, raised on the object holding it
            expression = f"{expression}.{choice}[x]"
            if message.startswith("Expect any"):
                code, text = "required", "required element is missing"
            else:
                code, text = "structure", "only one value is allowed (a choice type has one value)"
        elif kind in _REQUIRED_ERRORS:
            code, text = "required", "required element is missing"
        elif kind == "fhir-validation-wrong-resource-type":
            code, text = "invalid", f"resourceType {value!r} is not {resource_type!r}"
        elif kind in _STRUCTURE_ERRORS or kind.endswith("_type"):
            code, text = "structure", message
        else:
            code = "value"
            shown = short_repr(value)
            what = f"a valid {fhir_type}" if fhir_type else "valid"
            text = f"{shown} is not {what}: {message}" if shown else message
        issues.append(Issue("error", code, f"{expression}: {text}", (expression,)))
    return issues


def _matches_fhir_regex(fhir_type: str | None, value: Any) -> bool:
    """Whether ``value`` matches the spec's regex for ``fhir_type`` with the spec's meaning of \\s.

    fhir.resources runs the FHIR regexes with Python's Unicode ``\\s``, which also matches
    U+00A0; the spec's (XML Schema / Java) ``\\s`` is ASCII whitespace only. Official R4
    examples (CodeSystem-v2-0550) have codes ending in U+00A0.
    """
    pattern = _FHIR_REGEX.get(fhir_type or "")
    return isinstance(value, str) and pattern is not None and pattern.fullmatch(value) is not None


def _choice_name(message: str) -> str | None:
    """The choice name in fhir.resources' "... from this list ['valueAge', 'valueBoolean']"."""
    if not message.startswith(("Expect any of field value", "Any of one field value")):
        return None
    names: list[str] = _QUOTED.findall(message)
    if not names:
        return None
    # the longest common prefix after which every name goes on with an upper-case letter
    for cut in range(min(len(n) for n in names) - 1, 0, -1):
        prefix = names[0][:cut]
        if all(n.startswith(prefix) and n[cut].isupper() for n in names):
            return prefix
    return None


def short_repr(value: Any) -> str:
    """A client's scalar value as quoted in diagnostics (cut short); "" for objects and arrays."""
    if isinstance(value, dict | list) or value is None:
        return ""
    shown = repr(value)
    if len(shown) > _MAX_INPUT_SHOWN:
        shown = shown[: _MAX_INPUT_SHOWN - 3] + "..."
    return shown


def _expression(
    resource_type: str, root: Spec | None, loc: tuple[int | str, ...]
) -> tuple[str, str | None, bool]:
    """FHIRPath for a pydantic loc, the FHIR type it ends on, and whether the walk knows it.

    Follows the loc through the model tables so that pydantic's own loc parts (union tags,
    validator names) are dropped; inside a contained resource, whose type the loc does not
    say, any element-like name is kept.
    """
    parts = [resource_type]
    spec: Spec | None = root
    fhir_type: str | None = None
    known = False
    at_primitive = False
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            continue
        if at_primitive:
            break
        known = False
        if part == "resource_type":
            parts.append(".resourceType")
            break
        if spec is None:
            if not _ELEMENT_NAME.fullmatch(part):
                break
            parts.append(f".{part.removeprefix('_')}")
            continue
        field = spec.fields.get(part)
        if field is None:
            if part not in ("root", "__root__") and _ELEMENT_NAME.fullmatch(part):
                parts.append(f".{part.removeprefix('_')}")  # an unknown element
            break
        parts.append(f".{field.element}")
        fhir_type = field.fhir_type
        known = True
        if field.kind is Kind.COMPLEX or field.kind is Kind.PRIMITIVE_EXTENSION:
            assert field.model is not None
            spec = spec_for(field.model)
        elif field.kind is Kind.RESOURCE:
            spec = None
        else:
            at_primitive = True
    return "".join(parts), fhir_type, known
