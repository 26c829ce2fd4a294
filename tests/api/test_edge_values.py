"""Values at the edges of R4's ranges, valid and not: valid ones are stored and found, invalid
ones are refused with a 400/404 that names them, and none of them gets a 5xx (issue #22)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import httpx
import orjson
import pytest

from service.features.referrals import FACILITY_EXTENSION
from service.fhir.codes import SIM_EXTENSION
from tests.api.test_errors import assert_outcome
from tests.api.test_naloxone import NALOXONE_4MG
from tests.builders import FHIR_JSON, organization, patient, task, transaction

LAST_DAY = "9999-12-31"  # calendar: fixed (the last day R4 can write)


async def _create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"/fhir/{body['resourceType']}", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def _found(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> list[str]:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return [e["resource"]["id"] for e in r.json().get("entry", [])]


def _observation(**value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **value}


def _token(payload: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


# --- dates at the ends of the calendar -----------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"authored-on": "gt9999-12-31"},  # calendar: fixed
        {"authored-on": "ge9999"},
        {"authored-on": "ap9999-12-31"},  # calendar: fixed
        {"authored-on": "sa9999-12-31T23:59:59-12:00"},  # calendar: fixed
        {"authored-on": "lt0001-01-01T00:00:00+14:00"},
        {"authored-on": "ap0001-01-01"},
        {"_lastUpdated": "gt9999-12-31T23:59:59Z"},  # calendar: fixed
        {"_lastUpdated": "gt9999-12-31T23:59:59.999999-12:00"},  # calendar: fixed
        {"_lastUpdated": "lt0001-01-01T00:00:00+14:00"},
    ],
)
async def test_searches_at_the_ends_of_the_calendar_find_nothing(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    await _create(client, task())
    assert await _found(client, "/fhir/Task", params) == []


@pytest.mark.parametrize(
    "since",
    ["9999-12-31T23:59:59Z", "9999-12-31T23:59:59-12:00"],  # calendar: fixed
)
async def test_history_since_the_end_of_the_calendar_is_empty(
    client: httpx.AsyncClient, since: str
) -> None:
    created = await _create(client, patient())
    for path in ("Patient/_history", "_history", f"Patient/{created['id']}/_history"):
        r = await client.get(f"/fhir/{path}", params={"_since": since})
        assert r.status_code == 200, r.text
        assert r.json().get("entry", []) == [], path


async def test_history_since_year_one_lists_everything(client: httpx.AsyncClient) -> None:
    created = await _create(client, patient())
    since = {"_since": "0001-01-01T00:00:00+14:00"}
    r = await client.get(f"/fhir/Patient/{created['id']}/_history", params=since)
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [created["id"]]
    # (Type history shows a version once older transactions end: on a shared PostgreSQL, not
    # necessarily yet.)
    assert (await client.get("/fhir/Patient/_history", params=since)).status_code == 200


@pytest.mark.parametrize(
    ("birth_date", "searches"),
    [
        (
            LAST_DAY,
            ["9999-12-31", "9999", "9999-12", "gt9999-12-30", "ge9999-12-31"],  # calendar: fixed
        ),
        ("9999", ["9999", "ge9999-01-01", "le9999-12-31"]),  # calendar: fixed
        ("0001-01-01", ["0001-01-01", "0001", "lt0001-01-02", "le0001-01-01"]),
        ("0001", ["0001", "eq0001"]),
    ],
)
async def test_birth_dates_at_the_ends_of_the_calendar_are_stored_and_found(
    client: httpx.AsyncClient, birth_date: str, searches: list[str]
) -> None:
    created = await _create(client, dict(patient(), birthDate=birth_date))
    read = (await client.get(f"/fhir/Patient/{created['id']}")).json()
    assert read["birthDate"] == birth_date
    for value in searches:
        assert await _found(client, "/fhir/Patient", {"birthdate": value}) == [created["id"]], value
    assert await _found(client, "/fhir/Patient", {"birthdate": "2000"}) == []


@pytest.mark.parametrize(
    ("when", "searches", "misses"),
    [
        # Its UTC instant is 0000-12-31T10:00Z, before the first stored instant: it is kept as
        # sent and indexed as 0001-01-01T00:00Z, the nearest instant the databases hold.
        (
            "0001-01-01T00:00:00+14:00",
            ["0001-01-01T00:00:00+14:00", "0001", "lt0001-01-02"],
            ["gt0001-01-01"],
        ),
        (
            "9999-12-31T23:59:59-12:00",  # calendar: fixed
            ["9999-12-31T23:59:59-12:00", "9999", "gt9999-12-30"],  # calendar: fixed
            ["lt9999-12-31"],  # calendar: fixed
        ),
        ("2016-12-31T23:59:60Z", ["2016-12-31", "2016-12-31T23:59:60Z"], ["2017"]),
    ],
)
async def test_date_times_whose_utc_instant_leaves_the_calendar_are_stored_and_found(
    client: httpx.AsyncClient, when: str, searches: list[str], misses: list[str]
) -> None:
    created = await _create(client, _observation(effectiveDateTime=when))
    read = (await client.get(f"/fhir/Observation/{created['id']}")).json()
    assert read["effectiveDateTime"] == when
    for value in searches:
        assert await _found(client, "/fhir/Observation", {"date": value}) == [created["id"]], value
    for value in misses:
        assert await _found(client, "/fhir/Observation", {"date": value}) == [], value


async def test_an_open_ended_consent_to_9999_is_stored_and_found(
    client: httpx.AsyncClient,
) -> None:
    org = await _create(client, organization())
    person = await _create(client, patient())
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{person['id']}"},
        "provision": {
            "type": "permit",
            "period": {"start": "2020-01-01", "end": LAST_DAY},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"reference": f"Organization/{org['id']}"},
                }
            ],
        },
    }
    created = await _create(client, consent)
    read = (await client.get(f"/fhir/Consent/{created['id']}")).json()
    assert read["provision"]["period"]["end"] == LAST_DAY
    for value in ("ge9999-12-31", "gt2999", "ge9999-12-31T23:59:59Z", "sa2019"):  # calendar: fixed
        assert await _found(client, "/fhir/Consent", {"period": value}) == [created["id"]], value
    assert await _found(client, "/fhir/Consent", {"period": "eb2020"}) == []


async def test_search_page_token_with_a_date_out_of_the_calendar_is_400(
    client: httpx.AsyncClient,
) -> None:
    """A _page token's dates come back from the client: one whose UTC instant is in year 0
    is a damaged token, not a crash."""
    for i in range(3):
        await _create(client, patient(booking=f"B-{i}"))
    r = await client.get("/fhir/Patient", params={"_sort": "birthdate", "_count": "1"})
    assert r.status_code == 200, r.text
    damaged = _token(["f", "0001-01-01T00:00:00+14:00", "some-id"])
    r = await client.get("/fhir/Patient", params={"_sort": "birthdate", "_page": damaged})
    assert assert_outcome(r, 400)["issue"][0]["expression"] == ["_page"]


# --- integers in URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "version",
    [
        "³",  # str.isdigit() and int() take it; R4 integers are ASCII [0-9]
        "٣",  # Arabic-Indic three: int() reads it as 3
        "2147483648",  # past R4's integer (and PostgreSQL's INTEGER column)
        "99999999999999999999",  # past SQLite's 64-bit integer
        "9" * 5000,  # past the length int() converts at all
    ],
)
async def test_vread_of_a_version_no_resource_can_have_is_404(
    client: httpx.AsyncClient, version: str
) -> None:
    created = await _create(client, patient())
    r = await client.get(f"/fhir/Patient/{created['id']}/_history/{version}")
    body = assert_outcome(r, 404, "not-found")
    assert "is unknown" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "count", ["²", "٣", "2147483648", "99999999999999999999", "-1", "1.5", "9" * 5000]
)
@pytest.mark.parametrize("where", ["Patient", "Patient/_history", "_history", "instance"])
async def test_count_that_is_not_an_r4_integer_is_400(
    client: httpx.AsyncClient, count: str, where: str
) -> None:
    created = await _create(client, patient())
    path = f"Patient/{created['id']}/_history" if where == "instance" else where
    r = await client.get(f"/fhir/{path}", params={"_count": count})
    body = assert_outcome(r, 400, "invalid")
    assert "_count must be an integer from 0 to 2147483647" in body["issue"][0]["diagnostics"]
    assert len(body["issue"][0]["diagnostics"]) < 200  # the value quoted, cut short
    assert body["issue"][0]["expression"] == ["_count"]


async def test_count_at_r4s_limit_is_capped_at_the_page_size(client: httpx.AsyncClient) -> None:
    await _create(client, patient())
    for path in ("Patient", "Patient/_history"):
        r = await client.get(f"/fhir/{path}", params={"_count": "2147483647"})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("page", ["2147483648", "99999999999999999999", "³", "-1"])
async def test_instance_history_page_past_any_version_is_400(
    client: httpx.AsyncClient, page: str
) -> None:
    created = await _create(client, patient())
    r = await client.get(f"/fhir/Patient/{created['id']}/_history", params={"_page": page})
    body = assert_outcome(r, 400, "invalid")
    assert body["issue"][0]["expression"] == ["_page"]


async def test_instance_history_page_at_r4s_limit_lists_every_version(
    client: httpx.AsyncClient,
) -> None:
    created = await _create(client, patient())
    r = await client.get(f"/fhir/Patient/{created['id']}/_history", params={"_page": "2147483647"})
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [created["id"]]


@pytest.mark.parametrize(
    "position",
    [[2**63, 1], [1, 2**63], [-2, 1], [True, 1], [10**30, 1]],
    ids=["txid-past-bigint", "seq-past-bigint", "before-start", "boolean", "huge"],
)
async def test_feed_positions_past_bigint_are_400(
    client: httpx.AsyncClient, position: list[Any]
) -> None:
    # json, not orjson: orjson writes no integer past 64 bits.
    text = json.dumps(["c", *position])
    token = base64.urlsafe_b64encode(text.encode()).decode()
    r = await client.get("/fhir/Task", params={"_cursor": token})
    assert assert_outcome(r, 400)["issue"][0]["expression"] == ["_cursor"]
    r = await client.get("/fhir/Task/_history", params={"_page": token})
    assert assert_outcome(r, 400)["issue"][0]["expression"] == ["_page"]


@pytest.mark.parametrize("etag", ['W/"³"', 'W/"2147483648"', 'W/"99999999999999999999"', "W/"])
async def test_if_match_that_names_no_possible_version_is_400(
    client: httpx.AsyncClient, etag: str
) -> None:
    created = await _create(client, organization())
    r = await client.put(
        f"/fhir/Organization/{created['id']}",
        json=created,
        headers={**FHIR_JSON, "If-Match": etag.encode()},
    )
    body = assert_outcome(r, 400, "invalid")
    assert body["issue"][0]["expression"] == ["If-Match"]


@pytest.mark.parametrize(
    ("length", "status"), [("²", 201), ("٣", 201), ("9" * 5000, 413), ("0" * 30 + "2", 201)]
)
async def test_a_content_length_of_other_digits_or_thousands_of_them_is_no_500(
    client: httpx.AsyncClient, length: str, status: int
) -> None:
    """Servers in front normally refuse these; the app must not fail on one that does not."""
    body = orjson.dumps(patient())
    headers = [
        (b"content-type", b"application/fhir+json"),
        (b"content-length", length.encode()),
    ]
    r = await client.post("/fhir/Patient", content=body, headers=headers)
    assert r.status_code == status, r.text


# --- index widths --------------------------------------------------------------------------


async def test_token_systems_and_values_past_the_index_width_are_stored_and_found(
    client: httpx.AsyncClient,
) -> None:
    system = "https://example.org/" + "s" * 300
    value = "v" * 700
    body = dict(patient(), identifier=[{"system": system, "value": value}])
    body["meta"] = {"tag": [{"system": system, "code": "c" * 600}]}
    created = await _create(client, body)
    found = await _found(client, "/fhir/Patient", {"identifier": f"{system}|{value}"})
    assert found == [created["id"]]
    assert await _found(client, "/fhir/Patient", {"identifier": value}) == [created["id"]]
    assert await _found(client, "/fhir/Patient", {"_tag": f"{system}|{'c' * 600}"}) == [
        created["id"]
    ]


# --- PUT -----------------------------------------------------------------------------------


async def test_put_without_an_id_says_the_body_needs_one(client: httpx.AsyncClient) -> None:
    r = await client.put("/fhir/Patient/new-id", json=patient(), headers=FHIR_JSON)
    body = assert_outcome(r, 400, "invalid")
    assert body["issue"][0]["diagnostics"] == (
        "The resource in a PUT must have an id, equal to the URL's (new-id)"
    )
    assert body["issue"][0]["expression"] == ["Patient.id"]


# --- Bundle entries ------------------------------------------------------------------------


def _post_entry() -> dict[str, Any]:
    return {
        "fullUrl": "urn:uuid:2b4a6f0e-7f1e-4c59-9f57-2f4e6f1c0a11",
        "resource": patient(),
        "request": {"method": "POST", "url": "Patient"},
    }


# (where to put what, the element the 400 must name)
MALFORMED: list[tuple[str, Any, str]] = [
    ("request.ifNoneExist", {"identifier": "x"}, "request.ifNoneExist"),
    ("request.ifNoneExist", 7, "request.ifNoneExist"),
    ("request.ifMatch", 3, "request.ifMatch"),
    ("request.ifNoneMatch", ["*"], "request.ifNoneMatch"),
    ("request.ifModifiedSince", True, "request.ifModifiedSince"),
    ("request.method", "FETCH", "request.method"),
    ("request.method", ["POST"], "request.method"),
    ("request.method", {"code": "POST"}, "request.method"),
    ("request.method", None, "request.method"),
    ("request.url", 42, "request.url"),
    ("request.url", "", "request.url"),
    ("request.url", "http://[::1/Patient", "request.url"),
    ("request", "POST Patient", "request"),
    ("request", None, "request"),
    ("fullUrl", 12, "fullUrl"),
    ("fullUrl", {"uuid": "x"}, "fullUrl"),
    ("resource", "a patient", "resource"),
    ("resource", [patient()], "resource"),
    ("resource", None, "resource"),
]


def _put(entry: dict[str, Any], where: str, value: Any) -> None:
    *parents, last = where.split(".")
    node = entry
    for key in parents:
        node = node[key]
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value


@pytest.mark.parametrize("kind", ["transaction", "batch"])
@pytest.mark.parametrize(("where", "value", "element"), MALFORMED)
async def test_a_malformed_bundle_entry_is_400_naming_its_element(
    client: httpx.AsyncClient, kind: str, where: str, value: Any, element: str
) -> None:
    entries = [_post_entry() for _ in range(4)]
    for i, entry in enumerate(entries):
        entry["fullUrl"] = entry["fullUrl"][:-1] + str(i)
    _put(entries[3], where, copy.deepcopy(value))
    bundle = dict(transaction(entries), type=kind)
    r = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
    body = assert_outcome(r, 400)
    issue = body["issue"][0]
    assert issue["expression"] == [f"Bundle.entry[3].{element}"]
    assert issue["diagnostics"].startswith(f"Bundle.entry[3].{element} ")
    assert await _found(client, "/fhir/Patient", {}) == []  # nothing written


async def test_every_malformed_element_of_a_bundle_is_reported_at_once(
    client: httpx.AsyncClient,
) -> None:
    bad = _post_entry()
    bad["request"]["ifNoneExist"] = 1
    bad["fullUrl"] = 2
    r = await client.post(
        "/fhir", json=transaction([_post_entry(), bad, "not an entry"]), headers=FHIR_JSON
    )
    body = assert_outcome(r, 400)
    assert [i["expression"] for i in body["issue"]] == [
        ["Bundle.entry[1].fullUrl"],
        ["Bundle.entry[1].request.ifNoneExist"],
        ["Bundle.entry[2]"],
    ]


async def test_bundle_if_match_naming_no_possible_version_is_400(
    client: httpx.AsyncClient,
) -> None:
    created = await _create(client, organization())
    entry = {
        "resource": created,
        "request": {
            "method": "PUT",
            "url": f"Organization/{created['id']}",
            "ifMatch": 'W/"99999999999"',
        },
    }
    r = await client.post("/fhir", json=transaction([entry]), headers=FHIR_JSON)
    issue = assert_outcome(r, 400)["issue"][0]
    assert "request.ifMatch must be a version ETag" in issue["diagnostics"]


async def test_bundle_vread_of_a_version_past_r4s_integer_is_404(
    client: httpx.AsyncClient,
) -> None:
    created = await _create(client, organization())
    entry = {
        "request": {"method": "GET", "url": f"Organization/{created['id']}/_history/2147483648"}
    }
    r = await client.post("/fhir", json=dict(transaction([entry]), type="batch"), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"] == "404"


# --- /v1 ------------------------------------------------------------------------------------


PERSON = {
    "person_id": "P-9",
    "family_name": "Okafor",
    "given_names": ["Ada"],
    "birth_date": "1980-02-03",
    "sex": "female",
}


async def test_a_v1_consent_may_run_to_the_end_of_the_calendar(
    client: httpx.AsyncClient, org_client: Any
) -> None:
    jail_org = await _create(client, organization("Jail", "jail"))
    otp = await _create(client, organization("OTP", "otp"))
    jail = await org_client(f"Organization/{jail_org['id']}")
    consent = {
        "person": PERSON,
        "signed_at": "2024-01-02T10:00:00Z",
        "signed_by": "Ada Okafor (self)",
        "recipients": [f"Organization/{otp['id']}"],
        "expires": "9999-12-31T23:59:59Z",  # calendar: fixed
    }
    r = await jail.post("/v1/consents", json=consent)
    assert r.status_code == 201, r.text
    assert r.json()["expires"].startswith("9999-12-31T23:59:59")  # calendar: fixed
    # Three hours short of year 10000 in UTC: refused, naming the field, not a crash.
    consent["expires"] = "9999-12-31T21:00:00-03:00"  # calendar: fixed
    r = await jail.post("/v1/consents", json=consent)
    assert 400 <= r.status_code < 500, r.text
    assert "expires" in r.text and "0001 to 9999" in r.text


def _referral_request(patient_id: str, start: str, extensions: list[Any]) -> dict[str, Any]:
    """A ServiceRequest a jail writes through FHIR, shaped as the referral workflow reads it
    but without the "Patient referral" category (one with it must record a valid intercept,
    so odd intercepts can only come from such requests, or from data older than that rule)."""
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "410606002"}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "requester": {"reference": "Organization/jail"},
        "occurrencePeriod": {"start": start},
        "extension": extensions,
    }


async def test_views_read_what_fhir_written_referrals_carry_at_their_edges(
    client: httpx.AsyncClient, org_client: Any, instruments: None
) -> None:
    """Valid R4 that /v1 would never write: releases at the ends of the calendar, our
    extensions with a code that is no number or a valueString. One such ServiceRequest
    answered 500 to the referral, to the jail's whole worklist and to the naloxone summary."""
    for org in ("jail", "otp"):
        body = dict(organization(org, org), id=org)
        r = await client.put(f"/fhir/Organization/{org}", json=body, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
    jail = await org_client("Organization/jail")
    person = (await jail.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)).json()["id"]
    sim, facility = SIM_EXTENSION, FACILITY_EXTENSION
    written = {}
    for start, extensions in [
        ("9999-12-31T23:59:59Z", [{"url": sim, "valueCoding": {"code": "x"}}]),  # calendar: fixed
        ("0001-01-01T00:00:00Z", [{"url": sim, "valueString": "4"}]),
        (LAST_DAY, [{"url": facility, "valueString": "the old jail"}]),
        ("2024-01-01T10:00:00Z", [{"url": sim, "valueCoding": {"code": "²"}}]),
    ]:
        body = _referral_request(person, start, extensions)
        r = await jail.post("/fhir/ServiceRequest", json=body, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        written[r.json()["id"]] = start
    for sr_id in written:
        r = await jail.get(f"/v1/referrals/{sr_id}")
        assert r.status_code == 200, r.text
        assert (r.json()["intercept"], r.json()["facility"]) == (None, None)
    for params in (
        {},
        {"release_from": "0001-01-01T00:00:00Z"},
        {
            "release_to": "9999-12-31T23:59:59Z",
            "release_from": "9999-12-31T00:00:00Z",
        },  # calendar: fixed
    ):
        r = await jail.get("/v1/referrals", params=params)
        assert r.status_code == 200, (params, r.text)
    listed = (await jail.get("/v1/referrals")).json()
    assert {v["referral_id"] for v in listed} == set(written)
    for params in ({}, {"from": "0001-01-01", "to": LAST_DAY}, {"group_by": "intercept"}):
        r = await jail.get("/v1/naloxone/summary", params=params)
        assert r.status_code == 200, (params, r.text)
    for release_at in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", None):  # calendar: fixed
        params = {"release_at": release_at} if release_at else {}
        r = await jail.get(f"/v1/people/{person}/prefill/overdose-risk", params=params)
        assert r.status_code == 200, (release_at, r.text)


async def test_summary_by_intercept_labels_a_code_that_is_no_number_as_written(
    client: httpx.AsyncClient, instruments: None
) -> None:
    person = await _create(client, patient())
    for code in ("²", "9" * 30):
        kit = {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": NALOXONE_4MG,
            "subject": {"reference": f"Patient/{person['id']}"},
            "quantity": {"value": 1},
            "whenHandedOver": "2024-10-05T08:00:00-04:00",
            "extension": [{"url": SIM_EXTENSION, "valueCoding": {"code": code}}],
        }
        await _create(client, kit)
    r = await client.get("/v1/naloxone/summary", params={"group_by": "intercept"})
    assert r.status_code == 200, r.text
    assert {g["label"] for g in r.json()["groups"]} >= {"²", "9" * 30}
