"""Index values of a resource for every search parameter of its type."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

from service.fhir.dates import OPEN_END, OPEN_START, parse_range
from service.search.near import position_entries
from service.search.params import SearchParam, indexed_params
from service.storage.repository import IndexEntry

# The widths of ``search_index.system`` and ``.value`` (storage.tables): a longer value is
# indexed, and searched (search.query), by its first characters, so it is still found.
SYSTEM_WIDTH = 255
VALUE_WIDTH = 512


def normalize_string(text: str) -> str:
    """Case- and accent-insensitive form used for string search."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def fit(text: str | None, width: int) -> str | None:
    return text[:width] if text is not None else None


def walk(node: Any, path: str) -> Iterator[Any]:
    """Values at a dotted path; lists are flattened at every step."""
    items = node if isinstance(node, list) else [node]
    head, _, rest = path.partition(".")
    for item in items:
        if not isinstance(item, dict) or head not in item:
            continue
        value = item[head]
        if rest:
            yield from walk(value, rest)
        elif isinstance(value, list):
            yield from value
        else:
            yield value


def relative_reference(reference: str, base_url: str | None) -> str:
    """``https://our.base/fhir/Task/1`` and ``Task/1/_history/2`` both index as ``Task/1``."""
    ref = reference
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1 :]
    if "/_history/" in ref and not ref.startswith(("http://", "https://", "urn:")):
        ref = ref.split("/_history/", 1)[0]
    return ref


def _tokens(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value or "text" in value:  # CodeableConcept
            for coding in value.get("coding", []):
                if isinstance(coding, dict) and "code" in coding:
                    yield coding.get("system"), str(coding["code"])
        elif "code" in value:  # Coding
            yield value.get("system"), str(value["code"])
        elif "value" in value:  # Identifier
            yield value.get("system"), str(value["value"])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        if "text" in value and isinstance(value["text"], str):
            yield value["text"]
        for key in ("family", "city", "postalCode", "state", "country", "district"):
            if isinstance(value.get(key), str):
                yield value[key]
        for key in ("given", "prefix", "suffix", "line"):
            for part in value.get(key, []) or []:
                if isinstance(part, str):
                    yield part


def _dates(value: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(value, str):
        rng = parse_range(value)
        if rng:
            yield rng
    elif isinstance(value, dict) and ("start" in value or "end" in value):  # Period
        start = parse_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = parse_range(value["end"]) if isinstance(value.get("end"), str) else None
        if start or end:
            yield (start[0] if start else OPEN_START), (end[1] if end else OPEN_END)


def entries_for(
    param: SearchParam, resource: dict[str, Any], base_url: str | None
) -> Iterator[tuple[str | None, str | None, Any, Any]]:
    """(system, value, low, high) tuples of one parameter."""
    for path in param.paths:
        for raw in walk(resource, path):
            if param.kind == "token":
                for system, code in _tokens(raw):
                    yield fit(system, SYSTEM_WIDTH), code[:VALUE_WIDTH], None, None
            elif param.kind == "reference":
                if isinstance(raw, dict) and isinstance(raw.get("reference"), str):
                    ref = relative_reference(raw["reference"], base_url)
                    target = ref.split("/", 1)[0] if "/" in ref and "://" not in ref else None
                    if param.targets_only and target is not None and target not in param.targets:
                        continue
                    # No ``system``: the value names the target type, and a row with a system
                    # would also maintain ``ix_search_system_value`` (a random insert into a
                    # large index, for every reference of every version and AuditEvent).
                    yield None, ref[:VALUE_WIDTH], None, None
                elif isinstance(raw, str):  # canonical (e.g. QuestionnaireResponse.questionnaire)
                    yield None, raw[:VALUE_WIDTH], None, None
                    if "|" in raw:
                        yield None, raw.split("|", 1)[0][:VALUE_WIDTH], None, None
            elif param.kind == "string":
                for text in _strings(raw):
                    yield text[:SYSTEM_WIDTH], normalize_string(text)[:VALUE_WIDTH], None, None
            elif param.kind == "uri":
                if isinstance(raw, str):
                    yield None, raw[:VALUE_WIDTH], None, None
            elif param.kind == "date":
                for low, high in _dates(raw):
                    yield None, None, low, high


def extract_index(
    resource: dict[str, Any], *, version_id: int, base_url: str | None = None
) -> list[IndexEntry]:
    resource_type = resource["resourceType"]
    resource_id = resource["id"]
    rows: list[IndexEntry] = []
    for param in indexed_params(resource_type):
        if param.kind == "special":  # Location near: a position, as two number rows
            rows += position_entries(resource_type, resource_id, version_id, resource)
            continue
        seen: set[tuple[Any, ...]] = set()
        for system, value, low, high in entries_for(param, resource, base_url):
            key = (system, value, low, high)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                IndexEntry(
                    resource_type=resource_type,
                    resource_id=resource_id,
                    version_id=version_id,
                    param=param.name,
                    system=system,
                    value=value,
                    low=low,
                    high=high,
                )
            )
    return rows
