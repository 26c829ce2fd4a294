"""Property tests: R4 primitive values at the edges of their ranges (tests.r4_values) go
through create, read and search, on both databases, without a 5xx; a valid value is read back
as sent and a search for it (``eq`` on a date, ``:exact`` on a string) finds it. And search
and history parameters (which the OpenAPI does not describe, so schemathesis cannot generate
them) with values that have broken parsers before: none may get a 5xx.

Bounded and derandomized, so each run tries the same few dozen examples in seconds. The
fixtures (one app and database per test) are shared by all the examples of a test: each
example creates its own resources and searches only among them (``_id``).

Decimals are served as written, to 18 significant digits and trailing zeros included
(service.fhir.exact_json).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.search.params import params_for
from service.search.query import DATE_PREFIXES, MODIFIERS, RESULT_PARAMS
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
    # Served exactly as written: the text, precision included, not the nearest double.
    assert f'"valueQuantity":{{"value":{amount}}}' in read.text, (amount, read.text)


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


# --- search and history parameters, which the OpenAPI does not describe ---------------------

SEARCHED_TYPES = ("Patient", "Task", "Observation", "Consent")
# Their UTC instants are in years 10000 and 0.
EDGE_INSTANTS = ["9999-12-31T23:59:59.999999-12:00", "0001-01-01T00:00:00+14:00"]
# ASCII, then digits of other scripts that str.isdigit() or int() accept (superscripts,
# Arabic-Indic, Devanagari, Thai).
_DIGITS = "0123456789²³¹\u0663\u0966\u0e53"


def _names(rtype: str) -> st.SearchStrategy[str]:
    """Any parameter, with any modifier; most often those that take numbers and dates."""
    params = params_for(rtype)
    names = sorted({*params, *RESULT_PARAMS, "_since"})
    dates = sorted(name for name, p in params.items() if p.kind == "date")
    modifiers = sorted({m for ms in MODIFIERS.values() for m in ms} | {"iterate", "Patient"})
    any_name = st.builds(
        lambda name, modifier: f"{name}:{modifier}" if modifier else name,
        st.sampled_from(names),
        st.none() | st.sampled_from(modifiers),
    )
    return st.one_of(st.sampled_from(["_count", "_page", "_since", "_cursor", *dates]), any_name)


# Values that have broken parsers: other scripts' digits, integers past 32 and 64 bits, dates
# at the ends of the calendar with every prefix, escapes, separators, and plain text.
search_values = st.one_of(
    st.text(_DIGITS, min_size=1, max_size=25),
    st.integers(-(2**70), 2**70).map(str),
    st.builds(
        lambda prefix, value: prefix + value,
        st.sampled_from(["", *DATE_PREFIXES]),
        date_times() | st.sampled_from(EDGE_INSTANTS),
    ),
    st.sampled_from(["start", "*", ",", "\\", "|", "a|", "|b", "Patient/", "Task:owner", "-_id"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
)


@EXAMPLES
@given(
    rtype=st.sampled_from(SEARCHED_TYPES),
    data=st.data(),
    where=st.sampled_from(["search", "type-history", "instance-history", "vread"]),
)
async def test_no_search_or_history_parameter_gets_a_server_error(
    client: httpx.AsyncClient, rtype: str, data: st.DataObject, where: str
) -> None:
    params = data.draw(st.lists(st.tuples(_names(rtype), search_values), min_size=1, max_size=3))
    # A version id from the values, without "/": Starlette routes on the decoded path, where
    # %2F is a separator.
    version = quote(params[0][1].replace("/", "-"), safe="") or "-"
    path = {
        "search": rtype,
        "type-history": f"{rtype}/_history",
        "instance-history": f"{rtype}/some-id/_history",
        "vread": f"{rtype}/some-id/_history/{version}",
    }[where]
    r = await client.get(f"/fhir/{path}", params=params)
    assert r.status_code < 500, (path, params, r.text)
    r = await client.post(f"/fhir/{rtype}/_search", data=dict(params))
    assert r.status_code < 500, (params, r.text)
