"""JSON for FHIR bodies that keeps decimals exactly as written.

R4 decimals carry their precision: ``1.50`` is not ``1.5``, and a value may have up to 18
significant digits, past what a double holds. orjson reads every JSON number with a fraction or
exponent as a double, so a body that holds such a decimal is read again with the standard
library's parser, each such number becoming an ``ExactDecimal``: a float (validation, search
indexing and arithmetic see a number) that remembers its text, which ``dumps`` writes back
unchanged. Bodies without one (nearly all) cost one scan of their bytes more than before.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# A JSON number with a fraction or an exponent (in a string too: a false match only takes the
# slower, still exact, path).
_DECIMAL = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


class ExactDecimal(float):
    """A JSON number kept as it was written."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ExactDecimal:
        value = super().__new__(cls, text)
        value.text = text
        return value


def _changes_as_double(token: bytes) -> bool:
    if not (b"." in token or b"e" in token or b"E" in token):
        return token == b"-0"  # other integers orjson keeps exactly
    return repr(float(token)).encode() != token


def loads(raw: bytes | str) -> Any:
    """``orjson.loads``, with each decimal a double would change kept as an ``ExactDecimal``."""
    body = orjson.loads(raw)
    data = raw.encode() if isinstance(raw, str) else raw
    if any(_changes_as_double(m.group()) for m in _DECIMAL.finditer(data)):
        return json.loads(data, parse_float=ExactDecimal, parse_int=_int)
    return body


def _int(text: str) -> int | ExactDecimal:
    return ExactDecimal(text) if text == "-0" else int(text)


def _default(value: Any) -> Any:
    if isinstance(value, ExactDecimal):
        return orjson.Fragment(value.text.encode())
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """``orjson.dumps``, writing each ``ExactDecimal`` as it was read."""
    return orjson.dumps(value, default=_default)
