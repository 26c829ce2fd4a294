"""Text that cannot be stored: NUL (U+0000).

PostgreSQL's ``text`` and ``jsonb`` cannot hold U+0000 (SQLite can), and FHIR strings are not
meant to carry control characters. Refusing it where input arrives gives the same clear 400/422
on both databases, instead of a server error from PostgreSQL at the insert or the search.
"""

from __future__ import annotations

import json
from typing import Any

NUL = "\x00"


def nul_path(value: Any, path: str = "") -> str | None:
    """Where the first string (or object key) holding U+0000 is, as a dotted path with list
    indexes (``name[0].family``), ``""`` for the value itself; None if there is none."""
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            # Control characters in a key are escaped: the path is echoed in messages.
            name = json.dumps(str(key), ensure_ascii=False)[1:-1]
            here = f"{path}.{name}" if path else name
            if NUL in str(key):
                return here
            if (found := nul_path(item, here)) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := nul_path(item, f"{path}[{i}]")) is not None:
                return found
    return None


def nul_message(where: str) -> str:
    return f"{where or 'the value'} contains a NUL character (\\u0000), which cannot be stored"
