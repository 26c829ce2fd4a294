"""Property tests: R4 primitive values at the edges of their ranges (tests.r4_values) go
through create, read and search, on both databases, without a 5xx; a valid value is read back
as sent and a search for it (``eq`` on a date, ``:exact`` on a string) finds it.

Bounded and derandomized, so each run tries the same few dozen examples in seconds. The
fixtures (one app and database per test) are shared by all the examples of a test: each
example creates its own resources and searches only among them (``_id``).

Decimals keep 15 significant digits here: the body is parsed as JSON into doubles, so a
decimal with more digits (R4 asks for 18) or trailing zeros is served as the nearest double.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builders import FHIR_JSON
from tests.r4_values import (
    date_times,
    decimals,
    ids,
    instants,
    integers,
    integers_out_of_range,
    r4_dates,
    strings,
)

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    # One client for every example is the point (see above); a slow example is no failure.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _search_text(value: str) -> str:
    """A search value as R4 escapes it: a backslash before ``\\``, ``,``, ``$`` and ``|``."""
    for ch in "\\,$|":
        value = value.replace(ch, "\\" + ch)
    return value


async def _round_trip(
    client: httpx.AsyncClient, body: dict[str, Any], *, put_id: str | None = None
) -> dict[str, Any]:
    """Write ``body`` (POST, or PUT to ``put_id``) and read it back; no 5xx on the way."""
    rtype = body["resourceType"]
    content = orjson.dumps(body)
    if put_id is None:
        r = await client.post(f"/fhir/{rtype}", content=content, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
    else:
        r = await client.put(f"/fhir/{rtype}/{put_id}", content=content, headers=FHIR_JSON)
        assert r.status_code in (200, 201), r.text
    rid = r.json()["id"]
    read = await client.get(f"/fhir/{rtype}/{rid}")
    assert read.status_code == 200, read.text
    got: dict[str, Any] = read.json()
    return got


async def _finds(client: httpx.AsyncClient, rtype: str, rid: str, params: dict[str, str]) -> bool:
    r = await client.get(f"/fhir/{rtype}", params={**params, "_id": rid})
    assert r.status_code == 200, r.text
    return [e["resource"]["id"] for e in r.json().get("entry", [])] == [rid]


@EXAMPLES
@given(rid=ids, birth_date=r4_dates(), family=strings, given_name=strings)
async def test_patient_id_birth_date_and_names(
    client: httpx.AsyncClient, rid: str, birth_date: str, family: str, given_name: str
) -> None:
    body = {
        "resourceType": "Patient",
        "id": rid,
        "birthDate": birth_date,
        "name": [{"family": family, "given": [given_name]}],
    }
    got = await _round_trip(client, body, put_id=rid)
    assert got["id"] == rid
    assert got["birthDate"] == birth_date
    assert got["name"] == body["name"]
    assert await _finds(client, "Patient", rid, {"birthdate": f"eq{birth_date}"})
    assert await _finds(client, "Patient", rid, {"family:exact": _search_text(family)})
    assert await _finds(client, "Patient", rid, {"given": _search_text(given_name)})


def _observation(**value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "edge"}, **value}


@EXAMPLES
@given(effective=date_times(), issued=instants(), count=integers, amount=decimals)
async def test_observation_dates_integer_and_decimal(
    client: httpx.AsyncClient, effective: str, issued: str, count: int, amount: str
) -> None:
    body = _observation(effectiveDateTime=effective, issued=issued, valueInteger=count)
    got = await _round_trip(client, body)
    assert (got["effectiveDateTime"], got["issued"]) == (effective, issued)
    assert got["valueInteger"] == count
    assert await _finds(client, "Observation", got["id"], {"date": f"eq{effective}"})
    # A decimal is sent as written (JSON text, not a Python float).
    raw = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"edge"},'
        b'"valueQuantity":{"value":' + amount.encode() + b"}}"
    )
    r = await client.post("/fhir/Observation", content=raw, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    read = await client.get(f"/fhir/Observation/{r.json()['id']}")
    assert Decimal(repr(read.json()["valueQuantity"]["value"])) == Decimal(amount)


@EXAMPLES
@given(count=integers_out_of_range, period_start=date_times())
async def test_integers_past_32_bits_are_refused_not_failed(
    client: httpx.AsyncClient, count: int, period_start: str
) -> None:
    body = _observation(valueInteger=count, effectivePeriod={"start": period_start})
    # json, not orjson: orjson writes no integer past 64 bits.
    r = await client.post("/fhir/Observation", content=json.dumps(body), headers=FHIR_JSON)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["Observation.valueInteger"]


@EXAMPLES
@given(authored_on=date_times(), prefix=st.sampled_from(["eq", "ge", "le", "ap"]))
async def test_task_authored_on(client: httpx.AsyncClient, authored_on: str, prefix: str) -> None:
    body = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "authoredOn": authored_on,
    }
    got = await _round_trip(client, body)
    assert got["authoredOn"] == authored_on
    # eq, ge, le and ap each include the value itself.
    assert await _finds(client, "Task", got["id"], {"authored-on": f"{prefix}{authored_on}"})
    r = await client.get("/fhir/Task", params={"authored-on": f"gt{authored_on}", "_id": got["id"]})
    assert r.status_code == 200, r.text
    assert r.json().get("entry", []) == []
