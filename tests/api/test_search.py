"""FHIR search: parameters, modifiers, prefixes, includes, sorting, paging, handling."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.builders import FHIR_JSON, organization, patient, task


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"/fhir/{body['resourceType']}", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return r.json()


async def ids(client: httpx.AsyncClient, path: str, **params: Any) -> set[str]:
    r = await client.get(f"/fhir/{path}", params=params)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "searchset"
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


async def test_token_forms(client: httpx.AsyncClient) -> None:
    a = await create(client, task(identifier="R-1"))
    b = await create(client, task(identifier="R-2", status="accepted"))
    assert await ids(client, "Task", identifier="https://jail.example.org/referral|R-1") == {
        a["id"]
    }
    assert await ids(client, "Task", identifier="R-2") == {b["id"]}
    assert await ids(client, "Task", identifier="|R-2") == set()  # R-2 has a system
    assert await ids(client, "Task", identifier="https://jail.example.org/referral|") == {
        a["id"],
        b["id"],
    }
    assert await ids(client, "Task", status="requested,accepted") == {a["id"], b["id"]}
    assert await ids(client, "Task", **{"status:not": "requested"}) == {b["id"]}
    assert await ids(client, "Task", code="http://hl7.org/fhir/CodeSystem/task-code|approve") == {
        a["id"],
        b["id"],
    }


async def test_reference_forms_and_missing(client: httpx.AsyncClient) -> None:
    a = await create(client, task(owner="Organization/prov-1"))
    b = await create(client, task(owner=None))
    assert await ids(client, "Task", owner="Organization/prov-1") == {a["id"]}
    assert await ids(client, "Task", owner="prov-1") == {a["id"]}
    assert await ids(client, "Task", owner="http://testserver/fhir/Organization/prov-1") == {
        a["id"]
    }
    assert await ids(client, "Task", **{"owner:Organization": "prov-1"}) == {a["id"]}
    assert await ids(client, "Task", **{"owner:missing": "true"}) == {b["id"]}
    assert await ids(client, "Task", **{"owner:missing": "false"}) == {a["id"]}
    assert await ids(client, "Task", patient="Patient/p1") == {a["id"], b["id"]}


async def test_string_search_is_prefix_case_and_accent_insensitive(
    client: httpx.AsyncClient,
) -> None:
    j = await create(client, patient(family="Muñoz", given="José", booking="S-1"))
    await create(client, patient(family="Smith", given="Ann", booking="S-2"))
    assert await ids(client, "Patient", family="munoz") == {j["id"]}
    assert await ids(client, "Patient", family="MUN") == {j["id"]}
    assert await ids(client, "Patient", name="jose") == {j["id"]}
    assert await ids(client, "Patient", **{"family:exact": "Muñoz"}) == {j["id"]}
    assert await ids(client, "Patient", **{"family:exact": "munoz"}) == set()
    assert await ids(client, "Patient", **{"family:contains": "ño"}) == {j["id"]}
    assert await ids(client, "Patient", family="unoz") == set()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20", {"mid"}),
        ("eq2026-11", {"early", "mid", "late"}),
        ("gt2026-11-20", {"late"}),
        ("ge2026-11-20", {"mid", "late"}),
        ("lt2026-11-20", {"early"}),
        ("le2026-11-20T10:00:00Z", {"early", "mid"}),
        ("ne2026-11-20", {"early", "late"}),
        ("sa2026-11-20", {"late"}),
        ("eb2026-11-20", {"early"}),
        ("gt2026-11-20T09:59:59Z", {"mid", "late"}),
    ],
)
async def test_date_prefixes(client: httpx.AsyncClient, value: str, expected: set[str]) -> None:
    made = {
        "early": await create(client, task(authored_on="2026-11-02T08:00:00Z")),
        "mid": await create(client, task(authored_on="2026-11-20T10:00:00Z")),
        "late": await create(client, task(authored_on="2026-11-28T23:00:00+02:00")),
    }
    got = await ids(client, "Task", **{"authored-on": value})
    assert got == {made[k]["id"] for k in expected}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gt2026-11-20", {"open-end"}),
        ("ge2026-11-10", {"open-end", "open-start"}),
        ("lt2026-11-05", {"open-start", "closed"}),
        ("le2026-11-01", {"open-start", "closed"}),
        ("ne2026-11-10", {"open-end", "open-start", "closed"}),
        ("eq2026-11", {"closed"}),
        ("sa2026-11-05", {"open-end"}),
        ("eb2026-11-10", {"closed"}),
    ],
)
async def test_date_prefixes_on_open_periods(
    client: httpx.AsyncClient, value: str, expected: set[str]
) -> None:
    """A Period without an end runs on for ever, one without a start from for ever: they match
    every comparison on their open side."""
    periods = {
        "open-end": {"start": "2026-11-10"},
        "open-start": {"end": "2026-11-10"},
        "closed": {"start": "2026-11-01", "end": "2026-11-05"},
    }
    made = {}
    for key, period in periods.items():
        made[key] = await create(client, {**task(), "executionPeriod": period})
    got = await ids(client, "Task", period=value)
    assert got == {made[k]["id"] for k in expected}


async def test_last_updated_and_id(client: httpx.AsyncClient) -> None:
    a = await create(client, organization(identifier="o-1"))
    b = await create(client, organization(identifier="o-2"))
    assert await ids(client, "Organization", _id=f"{a['id']},{b['id']}") == {a["id"], b["id"]}
    stamp = a["meta"]["lastUpdated"]
    assert a["id"] in await ids(client, "Organization", _lastUpdated=f"ge{stamp}")
    assert await ids(client, "Organization", _lastUpdated="lt2000-01-01") == set()


async def test_tag_and_security(client: httpx.AsyncClient) -> None:
    body = organization(identifier="o-t")
    body["meta"] = {
        "tag": [{"system": "https://example.org/tags", "code": "pilot"}],
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
        ],
    }
    o = await create(client, body)
    await create(client, organization(identifier="o-u"))
    assert await ids(client, "Organization", _tag="https://example.org/tags|pilot") == {o["id"]}
    assert await ids(client, "Organization", _security="R") == {o["id"]}


async def patient_referral_task(client: httpx.AsyncClient) -> tuple[dict, dict, dict]:
    """A Patient, a ServiceRequest for them, and a Task on it (the references to include)."""
    p = await create(client, patient())
    sr = await create(
        client,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{p['id']}"},
        },
    )
    t = await create(
        client, task(patient_ref=f"Patient/{p['id']}", focus=f"ServiceRequest/{sr['id']}")
    )
    return p, sr, t


async def test_includes_and_revinclude(client: httpx.AsyncClient) -> None:
    _, sr, t = await patient_referral_task(client)
    r = await client.get(
        "/fhir/Task",
        params=[("_id", t["id"]), ("_include", "Task:focus"), ("_include", "Task:patient")],
    )
    entries = r.json()["entry"]
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in entries}
    assert modes == {("Task", "match"), ("ServiceRequest", "include"), ("Patient", "include")}
    r = await client.get(
        "/fhir/ServiceRequest", params={"_id": sr["id"], "_revinclude": "Task:focus"}
    )
    entries = r.json()["entry"]
    assert {(e["resource"]["resourceType"], e["search"]["mode"]) for e in entries} == {
        ("ServiceRequest", "match"),
        ("Task", "include"),
    }
    # iterate: Task -> focus ServiceRequest -> its patient
    r = await client.get(
        "/fhir/Task",
        params=[
            ("_id", t["id"]),
            ("_include", "Task:focus"),
            ("_include:iterate", "ServiceRequest:patient"),
        ],
    )
    types = sorted(e["resource"]["resourceType"] for e in r.json()["entry"])
    assert types == ["Patient", "ServiceRequest", "Task"]


async def test_include_wildcards_and_the_capability_statement(client: httpx.AsyncClient) -> None:
    p, sr, t = await patient_referral_task(client)
    expected = {("Task", t["id"]), ("ServiceRequest", sr["id"]), ("Patient", p["id"])}
    # R4's wildcard: every reference parameter of the source type; "*" alone is the searched
    # type's; a target type narrows it.
    for value in ("Task:*", "*"):
        r = await client.get("/fhir/Task", params={"_id": t["id"], "_include": value})
        assert r.status_code == 200, r.text
        found = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in r.json()["entry"]}
        assert expected <= found, value
    r = await client.get("/fhir/Task", params={"_id": t["id"], "_include": "Task:*:Patient"})
    assert {e["resource"]["resourceType"] for e in r.json()["entry"]} == {"Task", "Patient"}
    r = await client.get("/fhir/ServiceRequest", params={"_id": sr["id"], "_revinclude": "Task:*"})
    assert {(e["resource"]["id"], e["search"]["mode"]) for e in r.json()["entry"]} == {
        (sr["id"], "match"),
        (t["id"], "include"),
    }

    metadata = (await client.get("/fhir/metadata")).json()
    by_type = {res["type"]: res for res in metadata["rest"][0]["resource"]}
    assert {"*", "Task:*", "Task:focus", "Task:owner"} <= set(by_type["Task"]["searchInclude"])
    # What may point at a type: Task:focus at a ServiceRequest, not Task:owner.
    assert "Task:focus" in by_type["ServiceRequest"]["searchRevInclude"]
    assert "Task:owner" not in by_type["ServiceRequest"]["searchRevInclude"]
    assert "Task:owner" in by_type["Organization"]["searchRevInclude"]


async def test_sort_and_count_and_total(client: httpx.AsyncClient) -> None:
    dates = ["2026-11-03T00:00:00Z", "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"]
    made = [await create(client, task(authored_on=d)) for d in dates]
    r = (
        await client.get("/fhir/Task", params={"_sort": "authored-on", "_total": "accurate"})
    ).json()
    assert [e["resource"]["authoredOn"] for e in r["entry"]] == sorted(dates)
    assert r["total"] == 3
    r = (await client.get("/fhir/Task", params={"_sort": "-authored-on", "_count": 2})).json()
    assert [e["resource"]["authoredOn"] for e in r["entry"]] == sorted(dates, reverse=True)[:2]
    assert any(link["relation"] == "next" for link in r["link"])
    count = (await client.get("/fhir/Task", params={"_summary": "count"})).json()
    assert count["total"] == 3 and "entry" not in count
    assert len(made) == 3


async def test_count_zero_answers_the_total(client: httpx.AsyncClient) -> None:
    """fhirpy's count() asks ``_count=0`` and reads ``total``: a searchset with no entries."""
    await create(client, task(status="requested"))
    await create(client, task(status="requested"))
    await create(client, task(status="accepted"))
    r = await client.get("/fhir/Task", params={"status": "requested", "_count": "0"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "searchset"
    assert body["total"] == 2
    assert "entry" not in body
    assert not any(link["relation"] == "next" for link in body.get("link", []))
    none = (await client.get("/fhir/Task", params={"status": "cancelled", "_count": "0"})).json()
    assert none["total"] == 0


async def test_elements_subsets(client: httpx.AsyncClient) -> None:
    t = await create(client, task())
    r = (await client.get("/fhir/Task", params={"_id": t["id"], "_elements": "owner"})).json()
    res = r["entry"][0]["resource"]
    # the listed element, plus what R4 makes mandatory (status, intent)
    assert set(res) == {"resourceType", "id", "meta", "owner", "status", "intent"}
    assert any(tag["code"] == "SUBSETTED" for tag in res["meta"]["tag"])


async def test_elements_name_choices_and_keep_primitive_extensions(
    client: httpx.AsyncClient,
) -> None:
    """``_elements=value`` keeps value[x] in whichever type it has; a kept primitive keeps its
    ``_name`` sibling; a mandatory complex element (Observation.code) is kept too."""
    made = await create(
        client,
        {
            "resourceType": "Observation",
            "status": "final",
            "_status": {"extension": [{"url": "https://example.org/x", "valueString": "y"}]},
            "code": {"text": "DAST-10 score"},
            "valueQuantity": {"value": 3},
            "note": [{"text": "kept out"}],
        },
    )
    r = await client.get("/fhir/Observation", params={"_id": made["id"], "_elements": "value"})
    shown = r.json()["entry"][0]["resource"]
    assert set(shown) == {
        "resourceType",
        "id",
        "meta",
        "status",
        "_status",
        "code",
        "valueQuantity",
    }


async def test_summary_subsets(client: httpx.AsyncClient) -> None:
    """``_summary=true|text|data`` as R4 defines them (summary elements from the R4 models)."""
    body = task()
    body["text"] = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">T</div>',
    }
    body["note"] = [{"text": "call before release"}]
    t = await create(client, body)

    async def shown(summary: str) -> dict[str, Any]:
        r = await client.get("/fhir/Task", params={"_id": t["id"], "_summary": summary})
        return r.json()["entry"][0]["resource"]  # type: ignore[no-any-return]

    summary = await shown("true")
    assert {"status", "intent", "focus", "owner", "requester", "for"} <= set(summary)
    assert not {"note", "authoredOn", "priority", "text"} & set(summary)  # not summary in R4
    assert any(tag["code"] == "SUBSETTED" for tag in summary["meta"]["tag"])
    text = await shown("text")
    assert set(text) == {"resourceType", "id", "meta", "text", "status", "intent"}
    data = await shown("data")
    assert "text" not in data and data["note"] == body["note"]
    assert any(tag["code"] == "SUBSETTED" for tag in data["meta"]["tag"])
    whole = await shown("false")
    assert whole["text"] == body["text"] and "tag" not in whole["meta"]


async def test_post_search(client: httpx.AsyncClient) -> None:
    a = await create(client, task(identifier="P-1"))
    r = await client.post(
        "/fhir/Task/_search",
        content="identifier=P-1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [a["id"]]


async def test_unknown_parameter_lenient_and_strict(client: httpx.AsyncClient) -> None:
    await create(client, task())
    r = await client.get("/fhir/Task", params={"colour": "blue"})
    assert r.status_code == 200
    outcome = [e for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    self_link = next(link["url"] for link in r.json()["link"] if link["relation"] == "self")
    assert "colour" not in self_link
    strict = await client.get(
        "/fhir/Task", params={"colour": "blue"}, headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400
    assert strict.json()["resourceType"] == "OperationOutcome"


async def test_empty_parameters_are_ignored_in_both_modes(client: httpx.AsyncClient) -> None:
    # R4 3.1.1.3: "Empty parameters are not an error - they are just ignored by the server".
    a = await create(client, task(status="requested"))
    b = await create(client, task(status="accepted"))
    for headers in ({}, {"Prefer": "handling=strict"}):
        r = await client.get(
            "/fhir/Task?status=&owner=&authored-on=&_count=&_sort=&_include=&status=accepted",
            headers=headers,
        )
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert [e["resource"]["id"] for e in bundle["entry"]] == [b["id"]]
        self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
        assert "owner" not in self_link and "authored-on" not in self_link
        assert "status=accepted" in self_link
    assert await ids(client, "Task", status="") == {a["id"], b["id"]}
    # An alternative left empty between commas is a malformed value, not an empty parameter.
    r = await client.get("/fhir/Task", params={"status": ","})
    assert r.status_code == 400
    assert "status" in r.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "params",
    [
        {"authored-on": "yesterday"},
        {"authored-on": "zz2026-01-01"},
        {"owner": "not a reference"},
        {"_count": "lots"},
        {"_sort": "status"},
        {"_include": "Task:nonsense"},
        {"_include": "Nope:*"},
        {"_revinclude": "*"},
        {"owner:missing": "maybe"},
        {"_page": "%%%garbage"},
        {"_cursor": "garbage"},
    ],
)
async def test_malformed_values_are_400_in_both_modes(
    client: httpx.AsyncClient, params: dict
) -> None:
    for headers in ({}, {"Prefer": "handling=strict"}):
        r = await client.get("/fhir/Task", params=params, headers=headers)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"


async def test_paging_visits_each_exactly_once_during_inserts(client: httpx.AsyncClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": task(owner="Organization/pager"),
                "request": {"method": "POST", "url": "Task"},
            }
            for _ in range(100)  # HANDOFF_BUNDLE_MAX_ENTRIES
        ],
    }
    expected: set[str] = set()
    for _ in range(10):
        r = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
        assert r.status_code == 200
        expected |= {e["resource"]["id"] for e in r.json()["entry"]}
    seen: list[str] = []
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await client.post(
                "/fhir/Task", json=task(owner="Organization/pager"), headers=FHIR_JSON
            )
            await asyncio.sleep(0)

    writing = asyncio.create_task(writer())
    url: str | None = "/fhir/Task?owner=Organization/pager&_count=100"
    pages = 0
    while url:
        page = (await client.get(url)).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        pages += 1
    stop.set()
    await writing
    assert len(seen) == len(set(seen)), "a resource was returned twice"
    assert expected <= set(seen), "a resource present before paging began was skipped"
    assert pages >= 10


async def test_previous_link_walks_back(client: httpx.AsyncClient) -> None:
    made = [await create(client, task(owner="Organization/pp")) for _ in range(5)]
    first = (
        await client.get("/fhir/Task", params={"owner": "Organization/pp", "_count": 2})
    ).json()
    second = (
        await client.get(next(link["url"] for link in first["link"] if link["relation"] == "next"))
    ).json()
    back = (
        await client.get(
            next(link["url"] for link in second["link"] if link["relation"] == "previous")
        )
    ).json()
    assert [e["resource"]["id"] for e in back["entry"]] == [
        e["resource"]["id"] for e in first["entry"]
    ]
    assert len(made) == 5


async def test_links_use_forwarded_public_base(client: httpx.AsyncClient, app, issue_token) -> None:
    app.state.settings.trusted_proxies = "*"
    await create(client, task())
    # Tokens are bound to the public base the client uses (issuer and audience).
    token = await issue_token(
        scopes="system/*.cruds handoff/admin", base="https://handoff.example.org"
    )
    r = await client.get(
        "/fhir/Task",
        params={"_count": 1},
        headers={
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "handoff.example.org",
            "Authorization": f"Bearer {token}",
        },
    )
    assert r.status_code == 200, r.text
    self_link = next(link["url"] for link in r.json()["link"] if link["relation"] == "self")
    assert self_link.startswith("https://handoff.example.org/fhir/Task?")
    assert r.json()["entry"][0]["fullUrl"].startswith("https://handoff.example.org/fhir/Task/")


async def test_uri_search_and_below(client: httpx.AsyncClient) -> None:
    def code_system(url: str) -> dict[str, Any]:
        return {"resourceType": "CodeSystem", "url": url, "status": "active", "content": "complete"}

    a = await create(client, code_system("https://example.org/cs/site/a"))
    b = await create(client, code_system("https://example.org/cs/site/b"))
    await create(client, code_system("https://example.org/other/c"))
    assert await ids(client, "CodeSystem", url="https://example.org/cs/site/a") == {a["id"]}
    assert await ids(client, "CodeSystem", url="https://example.org/cs/site") == set()
    assert await ids(client, "CodeSystem", **{"url:below": "https://example.org/cs/site"}) == {
        a["id"],
        b["id"],
    }
    # LIKE's wildcards in a value are matched as themselves.
    assert await ids(client, "CodeSystem", **{"url:below": "https://example.org/%"}) == set()


async def test_approximate_date_prefix(client: httpx.AsyncClient) -> None:
    near = await create(client, task(authored_on="2026-03-10T00:00:00Z"))
    far = await create(client, task(authored_on="2025-03-10T00:00:00Z"))
    # "ap": within a tenth of the distance from now, and at least a day.
    found = await ids(client, "Task", **{"authored-on": "ap2026-03-09"})
    assert near["id"] in found and far["id"] not in found
