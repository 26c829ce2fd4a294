"""``_summary=true|text|data``: the top-level elements a summarized resource keeps.

The R4 definitions mark summary elements (Σ) and mandatory ones (min 1); the ``fhir.resources``
models carry both flags, so the lists come from them rather than from a table of our own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import orjson

from service.fhir.r4 import model_for

# Always kept: what identifies the resource, and what changes its meaning.
_ALWAYS = frozenset({"resourceType", "id", "meta", "implicitRules", "modifierExtension"})


def _elements(resource_type: str, flag: str) -> frozenset[str]:
    fields = model_for(resource_type).model_fields
    return frozenset(
        field.alias or name
        for name, field in fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(flag)
    )


@functools.cache
def _mandatory(resource_type: str) -> frozenset[str]:
    return _ALWAYS | _elements(resource_type, "element_required")


@functools.cache
def _summary(resource_type: str) -> frozenset[str]:
    return _mandatory(resource_type) | _elements(resource_type, "summary_element_property")


def kept_elements(
    resource_type: str, *, elements: Sequence[str], summary: str | None
) -> frozenset[str] | None:
    """Top-level element names a search result keeps under ``_elements`` (the listed ones plus
    the mandatory ones) or ``_summary`` (``true``: the summary elements; ``text``: the
    narrative and mandatory elements; ``data``: everything but ``text``). None: the whole
    resource. ``_elements`` wins when both are given."""
    if elements:
        return _mandatory(resource_type) | frozenset(elements)
    if summary == "true":
        return _summary(resource_type)
    if summary == "text":
        return _mandatory(resource_type) | {"text"}
    return None


def drops_text(summary: str | None) -> bool:
    """``_summary=data``: the resource without its narrative."""
    return summary == "data"


SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}


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
    out = {k: v for k, v in body.items() if (k != "text" if keep is None else k in keep)}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return orjson.dumps(out).decode()
