"""Bundles the server emits: searchset, history, batch/transaction responses.

Entries are spliced from stored JSON text, so a page of 50 resources is never re-parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson

from service.errors import Issue
from service.fhir import summary as summary_rules
from service.fhir.dates import format_instant
from service.fhir.outcome import operation_outcome


class StoredResource(Protocol):
    """One stored version, as a Bundle shows it (storage.repository.StoredResource is one; this
    layer names only what it reads, and never imports storage)."""

    @property
    def resource_type(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def version_id(self) -> int: ...
    @property
    def last_updated(self) -> datetime: ...
    @property
    def deleted(self) -> bool: ...
    @property
    def raw(self) -> str | None: ...


NO_LONGER_MATCHES = "https://handoff.dev/fhir/StructureDefinition/search-no-longer-matches"


def _raw(value: Any) -> bytes:
    return orjson.dumps(value)


def full_url(base_url: str, stored: StoredResource) -> str:
    return f"{base_url}/{stored.resource_type}/{stored.id}"


def link(base_url: str, path: str, params: Sequence[tuple[str, str]]) -> str:
    query = urlencode(list(params))
    return f"{base_url}/{path}" + (f"?{query}" if query else "")


def assemble(head: dict[str, Any], entries: list[bytes]) -> bytes:
    """Bundle JSON from a head dict and pre-encoded entries (no re-encoding of resources)."""
    head_bytes = _raw(head)
    if not entries:
        return head_bytes
    return head_bytes[:-1] + b',"entry":[' + b",".join(entries) + b"]}"


def entry_bytes(
    *,
    full: str | None,
    resource_raw: str | None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    parts: list[bytes] = []
    if full is not None:
        parts.append(b'"fullUrl":' + _raw(full))
    if resource_raw is not None:
        parts.append(b'"resource":' + resource_raw.encode())
    for key, value in (extra or {}).items():
        parts.append(_raw(key) + b":" + _raw(value))
    return b"{" + b",".join(parts) + b"}"


def searchset(
    *,
    base_url: str,
    matches: Sequence[StoredResource],
    included: Sequence[StoredResource] = (),
    total: int | None,
    links: Sequence[tuple[str, str]],
    issues: Sequence[Issue] = (),
    no_longer_matching: set[tuple[str, str, int]] | None = None,
    elements: Sequence[str] = (),
    summary: str | None = None,
) -> bytes:
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "meta": {"lastUpdated": format_instant(datetime.now(UTC))},
    }
    if total is not None:
        head["total"] = total
    head["link"] = [{"relation": r, "url": u} for r, u in links]
    entries: list[bytes] = []
    for m in matches:
        search: dict[str, Any] = {"mode": "match"}
        if no_longer_matching and (m.resource_type, m.id, m.version_id) in no_longer_matching:
            search["extension"] = [{"url": NO_LONGER_MATCHES, "valueBoolean": True}]
        entries.append(
            entry_bytes(
                full=full_url(base_url, m),
                resource_raw=summary_rules.subset(m.raw, m.resource_type, elements, summary),
                extra={"search": search},
            )
        )
    for inc in included:
        entries.append(
            entry_bytes(
                full=full_url(base_url, inc),
                resource_raw=inc.raw,
                extra={"search": {"mode": "include"}},
            )
        )
    if issues:
        entries.append(
            entry_bytes(
                full=None,
                resource_raw=orjson.dumps(operation_outcome(issues)).decode(),
                extra={"search": {"mode": "outcome"}},
            )
        )
    return assemble(head, entries)


def history(
    *,
    base_url: str,
    versions: Sequence[tuple[StoredResource, str]],
    links: Sequence[tuple[str, str]],
    total: int | None = None,
) -> bytes:
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "meta": {"lastUpdated": format_instant(datetime.now(UTC))},
    }
    if total is not None:
        head["total"] = total
    head["link"] = [{"relation": r, "url": u} for r, u in links]
    entries: list[bytes] = []
    for stored, method in versions:
        url = f"{stored.resource_type}/{stored.id}"
        if stored.deleted:
            request = {"method": "DELETE", "url": url}
            response = {
                "status": "410 Gone",
                "etag": f'W/"{stored.version_id}"',
                "lastModified": format_instant(stored.last_updated),
            }
        else:
            request = {"method": method, "url": stored.resource_type if method == "POST" else url}
            response = {
                "status": "201 Created" if method == "POST" else "200 OK",
                "etag": f'W/"{stored.version_id}"',
                "lastModified": format_instant(stored.last_updated),
            }
        entries.append(
            entry_bytes(
                full=full_url(base_url, stored),
                resource_raw=stored.raw,
                extra={"request": request, "response": response},
            )
        )
    return assemble(head, entries)
