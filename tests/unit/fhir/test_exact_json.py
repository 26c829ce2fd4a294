"""R4 decimals keep their text through a read and a write (service.fhir.exact_json)."""

from __future__ import annotations

import orjson
import pytest

from service.fhir import exact_json
from service.fhir.exact_json import ExactDecimal


@pytest.mark.parametrize(
    "number",
    [
        "1.50",
        "100.000",
        "-0",
        "-0.0",
        "1E5",
        "1e-7",
        "0.123456789012345678",
        "123456789012345678.9",
    ],
)
def test_a_decimal_a_double_would_change_is_written_back_as_read(number: str) -> None:
    raw = f'{{"value":{number},"n":[1,2.5],"s":"1.50"}}'.encode()
    body = exact_json.loads(raw)
    assert isinstance(body["value"], ExactDecimal) and body["value"] == float(number)
    assert exact_json.dumps(body) == raw


def test_bodies_a_double_keeps_take_the_fast_path_unchanged() -> None:
    raw = b'{"value":2.5,"count":3,"text":"16 mg"}'
    body = exact_json.loads(raw)
    assert type(body["value"]) is float and exact_json.dumps(body) == raw
    # A number-like text inside a string only takes the slower path, with the same result.
    texty = b'{"value":2.5,"text":"1.50 mg"}'
    assert exact_json.dumps(exact_json.loads(texty)) == texty == orjson.dumps(orjson.loads(texty))


def test_anything_else_is_still_refused_by_the_serializer() -> None:
    with pytest.raises(TypeError):
        exact_json.dumps({"x": object()})
