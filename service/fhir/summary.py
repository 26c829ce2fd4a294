"""``_summary=true|text|data`` and ``_elements``: the top-level elements a subset keeps.

The R4 definitions mark summary elements (Σ), mandatory ones (min 1) and choice elements
(``value[x]``); the validation schema (``service.fhir.schema``) already reads the last two from
the ``fhir.resources`` models, and the models carry the summary flag, so nothing here is a table
of our own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import orjson

from service.fhir.r4 import model_for
from service.fhir.schema import spec_for

# Always kept: what identifies the resource, and what changes its meaning.
_ALWAYS = frozenset({"resourceType", "id", "meta", "implicitRules", "modifierExtension"})

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}


@functools.cache
def _mandatory(resource_type: str) -> frozenset[str]:
    spec = spec_for(model_for(resource_type))
    required_choices = (spec.choices[c] for c in spec.required_choices)
    return _ALWAYS.union(
        (name for name, _ in spec.required), (v for vs in required_choices for v in vs)
    )


@functools.cache
def _summary(resource_type: str) -> frozenset[str]:
    fields = model_for(resource_type).model_fields.items()
    summary = (
        field.alias or name
        for name, field in fields
        if isinstance(field.json_schema_extra, dict)
        and field.json_schema_extra.get("summary_element_property")
    )
    return _mandatory(resource_type).union(summary)


def kept_elements(
    resource_type: str, *, elements: Sequence[str], summary: str | None
) -> frozenset[str] | None:
    """Top-level element names a result keeps under ``_elements`` (the listed ones, a choice
    such as ``value`` in whichever type the resource has, plus the mandatory ones) or
    ``_summary`` (``true``: the summary elements; ``text``: the narrative and mandatory
    elements; ``data``: everything but ``text``). None: the whole resource. ``_elements`` wins
    when both are given."""
    if elements:
        choices = spec_for(model_for(resource_type)).choices
        named = (variant for e in elements for variant in choices.get(e, (e,)))
        return _mandatory(resource_type).union(named)
    if summary == "true":
        return _summary(resource_type)
    if summary == "text":
        return _mandatory(resource_type) | {"text"}
    return None


def drops_text(summary: str | None) -> bool:
    """``_summary=data``: the resource without its narrative."""
    return summary == "data"


def subset(
    raw: str | None, resource_type: str, elements: Sequence[str], summary: str | None
) -> str | None:
    """The stored JSON under ``_elements`` / ``_summary``: some top-level elements, tagged
    SUBSETTED; unchanged when neither asks for less."""
    keep = kept_elements(resource_type, elements=elements, summary=summary)
    drop_text = keep is None and drops_text(summary)
    if raw is None or (keep is None and not drop_text):
        return raw
    body = orjson.loads(raw)
    # A primitive's "_name" sibling (its id and extensions) goes with it.
    out = {
        k: v
        for k, v in body.items()
        if (k != "text" if keep is None else k in keep or k.removeprefix("_") in keep)
    }
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return orjson.dumps(out).decode()
