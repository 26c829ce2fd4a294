"""Validate a client's JSON as an R4 resource, reporting every problem at once.

Two passes over the same body, each doing what the other cannot:
- the R4B pydantic model (``model_validate``, lax mode) checks primitive formats: dates and
  calendar validity, id/code patterns, integer ranges;
- a walk over the raw JSON (``_Walker``) checks what lax pydantic misses or stops at: JSON types
  ("1" for an integer), null, ``{}`` and ``[]`` (ele-1), unknown elements, required elements and
  choice types in every object, contained resource types, ext-1, the R4 required bindings
  of ``service.fhir.bindings``, base64 (pydantic skips characters outside the alphabet),
  whitespace in uri/url/canonical (R4 allows none), per-1 (a Period may not end before it
  starts) and the narrative's XHTML (``service.fhir.narrative``: no scripts, txt-1).
Neither pass changes the body: what is stored is what the client sent.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from pydantic import ValidationError

from service.domain.binary import is_base64
from service.errors import InvalidResourceError, Issue
from service.fhir import r4
from service.fhir.dates import parse_bounds
from service.fhir.narrative import is_script_url, narrative_problem
from service.fhir.outcome import issues_from_validation_error, short_repr
from service.fhir.schema import URI_TYPES, Field, JsonType, Kind, Spec, spec_for

_MAX_CODES_LISTED = 12
# Nesting of JSON objects beyond any real resource (Questionnaire items nest ~10 deep); deeper
# bodies are refused before pydantic, whose recursion would otherwise exhaust the stack.
MAX_DEPTH = 64
_RELATIVE_REFERENCE = re.compile(
    r"([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)
_WHITESPACE = re.compile(r"\s")  # R4's uri is \S*
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_URL_TAIL = re.compile(
    r"/([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)


def validate_resource(body: Any, *, expected_type: str | None = None) -> None:
    """Raise InvalidResourceError (HTTP 400) carrying every problem found in ``body``.

    ``expected_type`` is the type named by the URL (PUT /Task/1): a body of another type is
    rejected. Without it, any of ``r4.SUPPORTED_TYPES`` is accepted; other types never are.
    """
    if not isinstance(body, dict):
        _fail(
            [_issue("structure", f"a resource must be a JSON object, not {json_type_name(body)}")]
        )

    issues: list[Issue] = []
    resource_type = body.get("resourceType")
    if not isinstance(resource_type, str):
        if "resourceType" not in body:
            issues.append(
                _issue("required", "resourceType: required element is missing", "resourceType")
            )
        else:
            issues.append(
                _issue(
                    "structure",
                    f"resourceType: must be a string, not {json_type_name(resource_type)}",
                    "resourceType",
                )
            )
        if expected_type is None or expected_type not in r4.SUPPORTED_TYPES:
            _fail(issues)
        resource_type = expected_type  # still report what else is wrong with the body
    if resource_type not in r4.SUPPORTED_TYPES:
        code = "not-supported" if resource_type in r4.R4_RESOURCE_TYPES else "value"
        _fail(
            [
                _issue(
                    code,
                    f"resourceType: {resource_type!r} is not a resource type this server stores;"
                    f" supported: {', '.join(r4.SUPPORTED_TYPES)}",
                    "resourceType",
                )
            ]
        )
    elif expected_type is not None and resource_type != expected_type:
        _fail(
            [
                _issue(
                    "invalid",
                    f"resourceType: {resource_type!r} does not match the type of this endpoint"
                    f" ({expected_type!r})",
                    "resourceType",
                )
            ]
        )

    model = r4.model_for(resource_type)
    walker = _Walker()
    walker.resource(body, spec_for(model), resource_type, contained=False)
    issues.extend(walker.issues)
    if walker.too_deep:
        _fail(issues)
    try:
        # A null in a list of objects makes fhir.resources reject the whole object holding the
        # list before checking its fields; the walk has reported the null, so let pydantic see
        # an empty object in its place (in a copy) and still check everything else.
        model.model_validate(
            _with_placeholders(body, walker.null_slots) if walker.null_slots else body
        )
    except ValidationError as exc:
        issues.extend(_not_yet_reported(issues, issues_from_validation_error(exc, resource_type)))
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        # fhir.resources crashes on some malformed input (e.g. an unknown contained resourceType)
        # that the walk has already reported; anything else is still a client error.
        if not issues:
            issues.append(_issue("invalid", f"the resource could not be parsed: {exc!r}"))
    if issues:
        _fail(issues)


def _with_placeholders(value: Any, slots: dict[int, set[int]]) -> Any:
    """A copy of ``value`` with ``{}`` at the list slots given as {id(list): {index, ...}}."""
    if isinstance(value, dict):
        return {k: _with_placeholders(v, slots) for k, v in value.items()}
    if isinstance(value, list):
        holes = slots.get(id(value), set())
        return [{} if i in holes else _with_placeholders(v, slots) for i, v in enumerate(value)]
    return value


def _not_yet_reported(walked: list[Issue], parsed: list[Issue]) -> list[Issue]:
    """The pydantic issues that the walk has not already explained.

    A pydantic issue is dropped when the walk reported the same element, something inside it
    (pydantic's coarser "list_type" on ``identifier`` for a null in ``identifier[0]``), or,
    unless it is a value-format problem, something around it; and so are pydantic's choice-type
    checks, which the walk does better.
    """
    seen = [e for issue in walked for e in issue.expression]
    kept: list[Issue] = []
    for issue in parsed:
        expr = issue.expression[0] if issue.expression else ""
        if expr.endswith("[x]"):
            continue  # choice types are checked by the walk, which also counts "_valueString"
        if any(
            w == expr or _inside(w, expr) or (issue.code != "value" and _inside(expr, w))
            for w in seen
        ):
            continue
        kept.append(issue)
    return kept


def _inside(inner: str, outer: str) -> bool:
    return inner.startswith(outer) and inner[len(outer) : len(outer) + 1] in (".", "[")


def _fail(issues: list[Issue]) -> Any:
    count = len(issues)
    summary = issues[0].diagnostics if count == 1 else f"{count} problems in the resource"
    raise InvalidResourceError(f"Invalid resource: {summary}", issues=issues)


def _issue(code: str, diagnostics: str, expression: str | None = None) -> Issue:
    return Issue("error", code, diagnostics, (expression,) if expression else ())


def _ends_before_it_starts(period: dict[str, Any]) -> bool:
    """per-1 (start <= end), where the two compare for certain: both with a time (and zone),
    or both dates of one precision; FHIRPath leaves a date against a time undecided."""
    start, end = period.get("start"), period.get("end")
    if not isinstance(start, str) or not isinstance(end, str):
        return False
    if ("T" in start) != ("T" in end) or ("T" not in start and len(start) != len(end)):
        return False
    # Unclamped: at the ends of the calendar clamping would make two instants equal.
    low, high = parse_bounds(start), parse_bounds(end)
    return low is not None and high is not None and high[1] < low[0]


def json_type_name(value: Any) -> str:
    """How a JSON value's type is named in messages ("a string", "an array", "null"...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_type_ok(value: Any, expected: JsonType) -> bool:
    if expected is JsonType.STRING:
        return isinstance(value, str)
    if expected is JsonType.BOOLEAN:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected is JsonType.INTEGER:
        return isinstance(value, int)
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


_EXPECTED: dict[JsonType, str] = {
    JsonType.STRING: "a JSON string",
    JsonType.BOOLEAN: "a JSON boolean (true/false)",
    JsonType.INTEGER: "a JSON number without a fraction",
    JsonType.NUMBER: "a JSON number",
}


class _Walker:
    """One walk over one body; collects issues with FHIRPath-style expressions."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        # id -> resourceType of the contained resources that "#id" references can point to
        self._contained: list[dict[str, str]] = []
        # nulls found in lists of objects, as {id(list): {index, ...}}
        self.null_slots: dict[int, set[int]] = {}
        self._depth = 0
        self.too_deep = False

    def resource(self, obj: dict[str, Any], spec: Spec, expr: str, *, contained: bool) -> None:
        if contained:  # resolves "#id" against its container
            self.object(obj, spec, expr, is_resource=True)
            return
        scope: dict[str, str] = {}
        inner = obj.get("contained")
        if isinstance(inner, list):
            for item in inner:
                if isinstance(item, dict):
                    rid, rtype = item.get("id"), item.get("resourceType")
                    if isinstance(rid, str) and isinstance(rtype, str):
                        scope[rid] = rtype
        self._contained.append(scope)
        try:
            self.object(obj, spec, expr, is_resource=True)
        finally:
            self._contained.pop()

    def add(self, code: str, expression: str, message: str) -> None:
        self.issues.append(Issue("error", code, f"{expression}: {message}", (expression,)))

    def object(self, obj: dict[str, Any], spec: Spec, expr: str, *, is_resource: bool) -> None:
        if self._depth >= MAX_DEPTH:
            if not self.too_deep:
                self.too_deep = True
                self.add("too-costly", expr, f"nested more than {MAX_DEPTH} objects deep")
            return
        self._depth += 1
        try:
            self._object(obj, spec, expr, is_resource=is_resource)
        finally:
            self._depth -= 1

    def _object(self, obj: dict[str, Any], spec: Spec, expr: str, *, is_resource: bool) -> None:
        if not obj:
            self.add("structure", expr, "empty object: an element must have a value or children")
            return
        chosen: dict[str, set[str]] = {}
        for key, value in obj.items():
            if key == "resourceType" and is_resource:
                continue
            field = spec.fields.get(key)
            if field is None:
                self._unknown(spec, expr, key)
                continue
            if field.choice is not None:
                chosen.setdefault(field.choice, set()).add(field.element)
            if field.plain_string and value and isinstance(value, str):
                continue  # the common case, checked without building an expression
            child = f"{expr}.{field.element}"
            if value is None:
                self.add("structure", child, "null is not allowed; leave the element out")
            elif field.is_list:
                self._list(obj, field, value, child)
            elif isinstance(value, list):
                self.add("structure", child, "must be a single value, not an array")
            else:
                self.value(field, value, child)
        if not is_resource and len(obj) == 1 and "id" in obj:
            self.add("structure", expr, "an element must have a value or children other than id")
        for element, ext in spec.required:
            if element not in obj and (ext is None or ext not in obj):
                self.add("required", f"{expr}.{element}", "required element is missing")
        for choice, elements in chosen.items():
            if len(elements) > 1:
                self.add(
                    "structure",
                    f"{expr}.{choice}[x]",
                    f"only one of {', '.join(sorted(elements))} is allowed"
                    " (a choice type has one value)",
                )
        for choice in spec.required_choices:
            if choice not in chosen:
                self.add("required", f"{expr}.{choice}[x]", "required element is missing")
        if spec.is_extension:
            # a "_valueString" with only extensions counts as a value
            self._ext_1(obj, "value" in chosen, expr)

    def _ext_1(self, obj: dict[str, Any], has_value: bool, expr: str) -> None:
        if has_value == ("extension" in obj):
            self.add(
                "invalid",
                expr,
                "an extension must have either extensions or a value[x], not both (ext-1)",
            )

    def _unknown(self, spec: Spec, expr: str, key: str) -> None:
        hint = difflib.get_close_matches(key, list(spec.fields), n=1)
        suffix = f"; did you mean {hint[0]!r}?" if hint else ""
        what = f"unknown element {key!r}" if key.startswith("_") else "unknown element"
        self.add("structure", f"{expr}.{key.removeprefix('_')}", f"{what}{suffix}")

    def _list(self, obj: dict[str, Any], field: Field, value: Any, expr: str) -> None:
        if not isinstance(value, list):
            self.add("structure", expr, f"must be an array, not {json_type_name(value)}")
            return
        if not value:
            self.add("structure", expr, "empty array: leave the element out")
            return
        # In primitive arrays a null holds the place of a value that only has extensions, and
        # the reverse in the "_name" array: each null needs a non-null partner at its index.
        partner: Any = None
        if field.kind is Kind.PRIMITIVE:
            partner = obj.get(f"_{field.name}")
        elif field.kind is Kind.PRIMITIVE_EXTENSION:
            partner = obj.get(field.element)
        for i, item in enumerate(value):
            item_expr = f"{expr}[{i}]"
            if item is None:
                has_partner = (
                    isinstance(partner, list) and i < len(partner) and partner[i] is not None
                )
                if field.kind is Kind.COMPLEX:
                    self.null_slots.setdefault(id(value), set()).add(i)
                if field.kind is Kind.COMPLEX or field.kind is Kind.RESOURCE or not has_partner:
                    self.add("structure", item_expr, "null is not allowed here")
            elif isinstance(item, list):
                self.add("structure", item_expr, "arrays cannot be nested")
            else:
                self.value(field, item, item_expr)

    def value(self, field: Field, value: Any, expr: str) -> None:
        if field.kind is Kind.PRIMITIVE:
            self._primitive(field, value, expr)
        elif not isinstance(value, dict):
            self.add("structure", expr, f"must be a JSON object, not {json_type_name(value)}")
        elif field.kind is Kind.RESOURCE:
            self._resource(value, expr, contained=field.name == "contained")
        else:
            assert field.model is not None
            self.object(value, spec_for(field.model), expr, is_resource=False)
            if field.fhir_type == "Reference":
                self._reference(value, field.targets, expr)
            elif field.fhir_type == "Period" and _ends_before_it_starts(value):
                self.add("invariant", expr, "the period ends before it starts (per-1)")
            elif (
                field.fhir_type == "Narrative"
                and isinstance(value.get("div"), str)
                and (problem := narrative_problem(value["div"]))
            ):
                self.add("invariant", f"{expr}.div", problem)

    def _reference(self, ref: dict[str, Any], targets: frozenset[str] | None, expr: str) -> None:
        """A literal reference must be a URL of some kind, and point to an allowed type."""
        url = ref.get("reference")
        if not isinstance(url, str) or not url:
            return  # type errors are reported by the walk already
        pointed: str | None = None
        if url.startswith("#"):
            if url != "#":
                scope = self._contained[-1] if self._contained else {}
                pointed = scope.get(url[1:])
                if pointed is None:
                    self.add(
                        "value",
                        f"{expr}.reference",
                        f"{url!r} names no contained resource of this resource",
                    )
                    return
        elif match := _RELATIVE_REFERENCE.fullmatch(url):
            pointed = match.group(1)
            if pointed not in r4.R4_RESOURCE_TYPES:
                self.add(
                    "value",
                    f"{expr}.reference",
                    f"{url!r}: {pointed!r} is not an R4 resource type",
                )
                return
        elif _ABSOLUTE_URI.fullmatch(url):
            tail = _URL_TAIL.search(url) if url.startswith(("http:", "https:")) else None
            if tail and tail.group(1) in r4.R4_RESOURCE_TYPES:
                pointed = tail.group(1)
        else:
            self.add(
                "value",
                f"{expr}.reference",
                f"{url!r} is not a valid reference; use 'Type/id', an absolute URL,"
                " 'urn:uuid:...' or '#contained-id'",
            )
            return
        declared = ref.get("type")
        if isinstance(declared, str) and declared in r4.R4_RESOURCE_TYPES:
            if pointed is not None and declared != pointed:
                self.add(
                    "value",
                    f"{expr}.type",
                    f"{declared!r} contradicts the reference {url!r}",
                )
                return
            pointed = pointed or declared
        if targets is not None and pointed is not None and pointed not in targets:
            self.add(
                "value",
                f"{expr}.reference",
                f"{url!r} points to a {pointed} resource; allowed: {', '.join(sorted(targets))}",
            )

    def _primitive(self, field: Field, value: Any, expr: str) -> None:
        expected = field.json_type
        assert expected is not None
        if not _json_type_ok(value, expected):
            shown = short_repr(value)
            self.add(
                "structure",
                expr,
                f"{field.fhir_type} must be {_EXPECTED[expected]}, not {json_type_name(value)}"
                + (f" ({shown})" if shown else ""),
            )
            return
        if isinstance(value, str) and not value:
            self.add("value", expr, "empty string is not allowed; leave the element out")
            return
        if field.fhir_type == "base64Binary" and isinstance(value, str) and not is_base64(value):
            self.add("value", expr, "is not base64 (A-Z, a-z, 0-9, +, / and = padding)")
            return
        if field.fhir_type in URI_TYPES and isinstance(value, str) and _WHITESPACE.search(value):
            self.add("value", expr, f"a {field.fhir_type} has no spaces; encode them as %20")
            return
        if field.fhir_type in URI_TYPES and isinstance(value, str) and is_script_url(value):
            # Attachment.url and the like are links a receiving EHR may render (stored XSS).
            self.add("value", expr, f"a {field.fhir_type} may not be a script (javascript:) URL")
            return
        binding = field.binding
        if binding is not None and value not in binding.allowed:
            codes = binding.codes
            listed = ", ".join(codes[:_MAX_CODES_LISTED])
            if len(codes) > _MAX_CODES_LISTED:
                listed += f", ... ({len(codes)} codes in {binding.value_set})"
            self.add(
                "code-invalid", expr, f"{short_repr(value)} is not a valid code; allowed: {listed}"
            )

    def _resource(self, obj: dict[str, Any], expr: str, *, contained: bool) -> None:
        resource_type = obj.get("resourceType")
        if not isinstance(resource_type, str):
            self.add("required", f"{expr}.resourceType", "a resource needs a resourceType")
            return
        model = r4.r4_resource_model(resource_type)
        if model is None:
            self.add(
                "value",
                f"{expr}.resourceType",
                f"{resource_type!r} is not an R4 resource type this server can validate",
            )
            return
        self.resource(obj, spec_for(model), expr, contained=contained)
