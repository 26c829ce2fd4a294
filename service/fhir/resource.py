"""Server-assigned parts of a stored resource: id, meta.versionId, meta.lastUpdated."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from typing import Any

from service.fhir.dates import format_instant

ID_RE = re.compile(r"^[A-Za-z0-9\-\.]{1,64}$")


def new_id() -> str:
    """A time-ordered UUID (v7 layout): new rows land at the end of the primary-key index and
    default ``_id`` ordering roughly follows creation."""
    ms = int(time.time() * 1000)
    rand = bytearray(os.urandom(10))
    rand[0] = (rand[0] & 0x0F) | 0x70  # version 7
    rand[2] = (rand[2] & 0x3F) | 0x80  # RFC 4122 variant
    raw = ms.to_bytes(6, "big") + bytes(rand)
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_ms() -> datetime:
    """The current instant truncated to the millisecond that meta.lastUpdated carries."""
    now = datetime.now(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def stamp(
    body: dict[str, Any], *, resource_id: str, version_id: int, last_updated: datetime
) -> dict[str, Any]:
    """The resource as the client sent it, with the server's id and meta (first, for readers).

    Client-supplied versionId/lastUpdated are replaced; tags, security labels and profiles kept.
    """
    meta = dict(body.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(last_updated)
    out: dict[str, Any] = {"resourceType": body["resourceType"], "id": resource_id, "meta": meta}
    for key, value in body.items():
        if key not in out:
            out[key] = value
    return out
