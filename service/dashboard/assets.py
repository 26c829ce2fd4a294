"""Files the dashboard serves itself (no CDN): its stylesheet and script, and plotly.js from
the installed ``plotly`` package (``plotly/package_data/plotly.min.js``).

URLs carry a hash of the content (``?v=``), so browsers may keep them for a year.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

CACHE_CONTROL = "public, max-age=31536000, immutable"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    content: bytes
    gzipped: bytes
    media_type: str
    version: str


def _path(name: str) -> Path | None:
    if name == "plotly.min.js":
        return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if name in ("dashboard.css", "dashboard.js"):
        return Path(str(resources.files("service.dashboard") / "static" / name))
    return None


@cache
def asset(name: str) -> Asset | None:
    path = _path(name)
    if path is None or not path.is_file():
        return None
    content = path.read_bytes()
    return Asset(
        content=content,
        gzipped=gzip.compress(content, compresslevel=6, mtime=0),
        media_type=_TYPES[path.suffix],
        version=hashlib.sha256(content).hexdigest()[:12],
    )


def url(name: str) -> str:
    found = asset(name)
    return f"/dashboard/static/{name}" + (f"?v={found.version}" if found else "")
