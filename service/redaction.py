"""Strip health data from what leaves the process in traces and logs.

Query strings carry search values (names, birth dates, identifiers): outside the request they
are reduced to the parameter NAMES. Exception messages can quote stored values: only the
exception type and where it was raised leave the process.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

_MAX_NAMES = 20
_MAX_NAME_LENGTH = 64
# A query string inside free text: from "?" up to whitespace or a quote.
_QUERY_IN_TEXT = re.compile(r"\?([^\s\"'<>]*)")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")


def query_names(query: str) -> list[str]:
    """The parameter names of a query string, in order, without values (``_count``, ``name``)."""
    return safe_names(name for name, _value in parse_qsl(query, keep_blank_values=True))


def safe_names(names: Iterable[str]) -> list[str]:
    """Search parameter names fit for logs and spans, at most 20 of them."""
    out: list[str] = []
    for name in names:
        name = name[:_MAX_NAME_LENGTH]
        # A name that is not a plain search-parameter name (chains and modifiers included) could
        # be a value pasted in the wrong place: keep only its position.
        out.append(name if _SAFE_NAME.match(name) else "?")
        if len(out) == _MAX_NAMES:
            out.append("...")
            break
    return out


def redact_query(query: str) -> str:
    """``name=Zebediah&_count=5`` -> ``name&_count``."""
    return "&".join(query_names(query))


def redact_url(url: str) -> str:
    """Scheme, host and path of a URL; the query reduced to names; no user info, no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "[unparseable url]"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, redact_query(parts.query), ""))


def redact_target(target: str) -> str:
    """A request target (``/fhir/Patient?name=x``) with the query reduced to names."""
    path, sep, query = target.partition("?")
    return f"{path}?{redact_query(query)}" if sep else path


def redact_text(text: str) -> str:
    """Free text (a log message) with any query string in it reduced to names."""
    return _QUERY_IN_TEXT.sub(lambda m: "?" + redact_query(m.group(1)), text)


def safe_traceback(exc: BaseException, *, limit: int = 8) -> str:
    """Where an exception was raised (file:line function), never its message."""
    frames = traceback.extract_tb(exc.__traceback__)[-limit:]
    return " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames)
    )
