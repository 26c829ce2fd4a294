"""Create, read, vread, update, delete and history over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx

from tests.builders import FHIR_JSON, organization, patient, task


async def test_create_returns_201_with_location_etag_and_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["resourceType"] == "Task"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert len(body["meta"]["lastUpdated"]) == len("2026-11-26T10:00:00.000Z")
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"] == f"http://testserver/fhir/Task/{body['id']}/_history/1"
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert "Last-Modified" in r.headers


async def test_create_ignores_client_id_and_keeps_extensions(client: httpx.AsyncClient) -> None:
    body = task()
    body["id"] = "client-chosen"
    body["extension"] = [{"url": "https://example.org/x", "valueString": "kept"}]
    r = await client.post("/fhir/Task", json=body, headers=FHIR_JSON)
    assert r.status_code == 201
    assert r.json()["id"] != "client-chosen"
    assert r.json()["extension"] == body["extension"]


async def test_read_and_vread(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)).json()
    r = await client.get(f"/fhir/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["ETag"] == 'W/"1"'
    v = await client.get(f"/fhir/Patient/{created['id']}/_history/1")
    assert v.status_code == 200 and v.json() == created
    missing = await client.get(f"/fhir/Patient/{created['id']}/_history/7")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"


async def test_read_and_vread_honour_elements_and_summary(client: httpx.AsyncClient) -> None:
    body = task()
    body["note"] = [{"text": "call before release"}]
    created = (await client.post("/fhir/Task", json=body, headers=FHIR_JSON)).json()
    url = f"/fhir/Task/{created['id']}"
    shown = (await client.get(url, params={"_elements": "owner"})).json()
    assert set(shown) == {"resourceType", "id", "meta", "owner", "status", "intent"}
    assert "SUBSETTED" in {t["code"] for t in shown["meta"]["tag"]}
    summary = (await client.get(f"{url}/_history/1", params={"_summary": "true"})).json()
    assert "focus" in summary and "note" not in summary
    assert (await client.get(url, params={"_summary": "false"})).json() == created
    refused = await client.get(url, params={"_summary": "count"})
    assert refused.status_code == 400 and "_summary" in refused.json()["issue"][0]["diagnostics"]


async def test_conditional_read(client: httpx.AsyncClient) -> None:
    """If-None-Match (this version) or If-Modified-Since (not before it) answer 304."""
    metadata = (await client.get("/fhir/metadata")).json()
    assert {r["conditionalRead"] for r in metadata["rest"][0]["resource"]} == {"full-support"}
    created = (await client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)).json()
    url = f"/fhir/Patient/{created['id']}"
    first = await client.get(url)
    modified = first.headers["Last-Modified"]
    assert (await client.get(url, headers={"If-None-Match": 'W/"1"'})).status_code == 304
    assert (await client.get(url, headers={"If-None-Match": 'W/"2"'})).status_code == 200
    same = await client.get(url, headers={"If-Modified-Since": modified})
    assert same.status_code == 304 and same.headers["ETag"] == 'W/"1"'
    earlier = "Mon, 01 Jan 2024 00:00:00 GMT"
    assert (await client.get(url, headers={"If-Modified-Since": earlier})).status_code == 200
    assert (await client.get(url, headers={"If-Modified-Since": "yesterday"})).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110)
    both = {"If-None-Match": 'W/"9"', "If-Modified-Since": modified}
    assert (await client.get(url, headers=both)).status_code == 200


async def test_read_unknown_is_404_outcome(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/Task/does-not-exist")
    assert r.status_code == 404
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"
    assert "Task/does-not-exist" in outcome["issue"][0]["diagnostics"]


async def test_update_with_if_match_and_stale_if_match(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    tid = created["id"]
    updated = dict(created, status="accepted")
    r = await client.put(
        f"/fhir/Task/{tid}", json=updated, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    assert r.headers["ETag"] == 'W/"2"'
    stale = await client.put(
        f"/fhir/Task/{tid}",
        json=dict(created, status="rejected"),
        headers={**FHIR_JSON, "If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert "version 2" in stale.json()["issue"][0]["diagnostics"]
    assert (await client.get(f"/fhir/Task/{tid}")).json()["status"] == "accepted"


PATCH_JSON = {"Content-Type": "application/json-patch+json"}


async def test_task_update_requires_if_match(client: httpx.AsyncClient) -> None:
    """PUT, PATCH and a Bundle's PUT or PATCH of a Task without If-Match: all the same 412,
    saying the header is required and naming the current version; nothing is written."""
    created = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    url = f"/fhir/Task/{created['id']}"
    accept = [{"op": "replace", "path": "/status", "value": "accepted"}]
    refused = [
        await client.put(url, json=dict(created, status="accepted"), headers=FHIR_JSON),
        await client.patch(url, json=accept, headers=PATCH_JSON),
    ]
    for r in refused:
        assert r.status_code == 412, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert r.headers["ETag"] == 'W/"1"'
        issue = r.json()["issue"][0]
        assert issue["code"] == "conflict"
        assert issue["expression"] == ["If-Match"]
        assert "If-Match header is required" in issue["diagnostics"]
        assert 'W/"1"' in issue["diagnostics"]
    patch_entry = {
        "resource": {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": base64.b64encode(json.dumps(accept).encode()).decode(),
        },
        "request": {"method": "PATCH", "url": f"Task/{created['id']}"},
    }
    r = await client.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": "transaction", "entry": [patch_entry]},
        headers=FHIR_JSON,
    )
    assert r.status_code == 412, r.text
    assert "If-Match header is required" in r.text
    assert (await client.get(url)).json()["meta"]["versionId"] == "1"

    patched = await client.patch(url, json=accept, headers={**PATCH_JSON, "If-Match": 'W/"1"'})
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "accepted"
    stale = await client.patch(url, json=accept, headers={**PATCH_JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert "version 2" in stale.json()["issue"][0]["diagnostics"]


async def test_if_match_optional_for_other_types(client: httpx.AsyncClient) -> None:
    created = (
        await client.post("/fhir/Organization", json=organization(), headers=FHIR_JSON)
    ).json()
    r = await client.put(
        f"/fhir/Organization/{created['id']}", json=dict(created, name="Renamed"), headers=FHIR_JSON
    )
    assert r.status_code == 200
    assert r.json()["name"] == "Renamed"


async def test_update_id_mismatch_is_400(client: httpx.AsyncClient) -> None:
    created = (
        await client.post("/fhir/Organization", json=organization(), headers=FHIR_JSON)
    ).json()
    r = await client.put(
        f"/fhir/Organization/{created['id']}", json=dict(created, id="other"), headers=FHIR_JSON
    )
    assert r.status_code == 400
    assert "must equal the id in the URL" in r.json()["issue"][0]["diagnostics"]


async def test_update_creates_with_client_id(client: httpx.AsyncClient) -> None:
    body = dict(organization(), id="org-chosen")
    r = await client.put("/fhir/Organization/org-chosen", json=body, headers=FHIR_JSON)
    assert r.status_code == 201
    assert r.headers["Location"].endswith("/fhir/Organization/org-chosen/_history/1")


async def test_delete_then_read_is_410_and_history_keeps_versions(
    client: httpx.AsyncClient,
) -> None:
    created = (
        await client.post("/fhir/Organization", json=organization(), headers=FHIR_JSON)
    ).json()
    oid = created["id"]
    r = await client.delete(f"/fhir/Organization/{oid}")
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    gone = await client.get(f"/fhir/Organization/{oid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    hist = (await client.get(f"/fhir/Organization/{oid}/_history")).json()
    assert hist["type"] == "history"
    assert [e["response"]["status"] for e in hist["entry"]] == ["410 Gone", "201 Created"]
    assert hist["entry"][0]["request"]["method"] == "DELETE"
    # deleted resources leave search
    found = (await client.get("/fhir/Organization", params={"_id": oid})).json()
    assert found.get("entry", []) == []


async def test_audit_event_cannot_be_written_by_clients(client: httpx.AsyncClient) -> None:
    body = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-11-26T10:00:00Z",
        "agent": [{"requestor": True}],
        "source": {"observer": {"display": "x"}},
    }
    r = await client.post("/fhir/AuditEvent", json=body, headers=FHIR_JSON)
    assert r.status_code == 405
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["allow"] == "GET"  # HTTP: a 405 says what the target does accept
    put = await client.put("/fhir/AuditEvent/x", json=body, headers=FHIR_JSON)
    assert (put.status_code, put.headers["allow"]) == (405, "GET")
    deleted = await client.delete("/fhir/AuditEvent/x")
    assert (deleted.status_code, deleted.headers["allow"]) == (405, "GET")


async def test_consent_cannot_be_deleted(client: httpx.AsyncClient) -> None:
    r = await client.delete("/fhir/Consent/whatever")
    assert r.status_code == 405
    assert "revoke" in r.json()["issue"][0]["diagnostics"]
    assert r.headers["allow"] == "GET, PUT, PATCH"


async def test_an_operation_asked_with_another_method_is_a_405_naming_its_methods(
    client: httpx.AsyncClient,
) -> None:
    """``PUT /fhir/Patient/$match`` is not an update of a Patient whose id is "$match"."""
    for method, path in (
        ("PUT", "/fhir/Patient/$match"),
        ("DELETE", "/fhir/Patient/$merge"),
        ("PATCH", "/fhir/Subscription/$status"),
    ):
        r = await client.request(method, path, json={}, headers=FHIR_JSON)
        assert r.status_code == 405, (method, path, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
        allowed = r.headers["allow"]
        assert method not in allowed and allowed, (path, allowed)
        assert path.rsplit("/", 1)[1] in r.json()["issue"][0]["diagnostics"]
    # A path that is no operation still answers as an invalid id.
    r = await client.put("/fhir/Patient/$nothing", json={}, headers=FHIR_JSON)
    assert r.status_code == 400


async def test_history_instance_and_type(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    tid = created["id"]
    await client.put(
        f"/fhir/Task/{tid}",
        json=dict(created, status="accepted"),
        headers={**FHIR_JSON, "If-Match": 'W/"1"'},
    )
    hist = (await client.get(f"/fhir/Task/{tid}/_history")).json()
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]
    assert hist["entry"][0]["request"] == {"method": "PUT", "url": f"Task/{tid}"}
    one = (await client.get(f"/fhir/Task/{tid}/_history", params={"_count": 1})).json()
    assert len(one["entry"]) == 1
    nxt = next(link["url"] for link in one["link"] if link["relation"] == "next")
    second = (await client.get(nxt)).json()
    assert [e["resource"]["meta"]["versionId"] for e in second["entry"]] == ["1"]
    # Type history is in commit order, fenced on PostgreSQL (a change shows once every older
    # transaction has ended, e.g. a concurrent autovacuum ANALYZE): poll briefly.
    for _ in range(200):
        typ = (await client.get("/fhir/Task/_history")).json()
        if len(typ.get("entry", [])) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(typ["entry"]) == 2


async def test_prefer_return_minimal_and_outcome(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/fhir/Task", json=task(), headers={**FHIR_JSON, "Prefer": "return=minimal"}
    )
    assert r.status_code == 201 and r.content == b""
    assert "Location" in r.headers
    r = await client.post(
        "/fhir/Task", json=task(), headers={**FHIR_JSON, "Prefer": "return=OperationOutcome"}
    )
    assert r.status_code == 201
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_application_json_accepted(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Task", json=task(), headers={"Content-Type": "application/json"})
    assert r.status_code == 201


async def test_concurrent_updates_never_lose_one(client: httpx.AsyncClient) -> None:
    created = (
        await client.post("/fhir/Organization", json=organization(), headers=FHIR_JSON)
    ).json()
    oid = created["id"]

    async def rename(i: int) -> int:
        body = dict(created, name=f"name-{i}")
        r = await client.put(
            f"/fhir/Organization/{oid}", json=body, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
        )
        return r.status_code

    statuses = await asyncio.gather(*(rename(i) for i in range(8)))
    assert sorted(statuses) == [200] + [412] * 7
    current = (await client.get(f"/fhir/Organization/{oid}")).json()
    assert current["meta"]["versionId"] == "2"


async def _write_events(client: httpx.AsyncClient) -> list[dict[str, object]]:
    """Every AuditEvent of a successful write: (action, the version it names), oldest first."""
    found = (
        await client.get(
            "/fhir/AuditEvent", params={"outcome": "0", "_sort": "date", "_count": 1000}
        )
    ).json()
    events = []
    for entry in found.get("entry", []):
        event = entry["resource"]
        if event["action"] in ("C", "U", "D"):
            versions = [
                e["what"]["reference"]
                for e in event["entity"]
                if "/_history/" in (e.get("what") or {}).get("reference", "")
            ]
            events.append({"action": event["action"], "versions": versions})
    return events


async def test_every_write_has_one_audit_event_and_a_failed_one_none(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    created = r.json()
    pid = created["id"]
    stale = await client.put(
        f"/fhir/Patient/{pid}", json=created, headers={**FHIR_JSON, "If-Match": 'W/"9"'}
    )
    assert stale.status_code == 412
    r = await client.put(
        f"/fhir/Patient/{pid}", json=created, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert r.status_code == 200, r.text
    assert (await client.delete(f"/fhir/Patient/{pid}")).status_code in (200, 204)
    # A transaction that fails on its second entry: its first entry's write is not audited.
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Task"}, "request": {"method": "POST", "url": "Task"}},
        ],
    }
    assert (await client.post("/fhir", json=bundle, headers=FHIR_JSON)).status_code in (400, 422)

    events = await _write_events(client)
    assert events == [
        {"action": "C", "versions": [f"Patient/{pid}/_history/1"]},
        {"action": "U", "versions": [f"Patient/{pid}/_history/2"]},
        {"action": "D", "versions": [f"Patient/{pid}/_history/3"]},
    ]


async def test_concurrent_patches_without_if_match_all_apply(client: httpx.AsyncClient) -> None:
    """A JSON Patch without If-Match (of a type that allows it) is a change to whatever is
    current when its turn comes: ten at once each add their alias (none answers 412 for a
    version it never named)."""
    created = (
        await client.post("/fhir/Organization", json=organization(), headers=FHIR_JSON)
    ).json()
    first = await client.patch(
        f"/fhir/Organization/{created['id']}",
        json=[{"op": "add", "path": "/alias", "value": ["Harbor"]}],
        headers=PATCH_JSON,
    )
    assert first.status_code == 200, first.text
    answers = await asyncio.gather(
        *(
            client.patch(
                f"/fhir/Organization/{created['id']}",
                json=[{"op": "add", "path": "/alias/-", "value": f"site {n}"}],
                headers=PATCH_JSON,
            )
            for n in range(10)
        )
    )
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    final = (await client.get(f"/fhir/Organization/{created['id']}")).json()
    assert sorted(final["alias"][1:]) == sorted(f"site {n}" for n in range(10))
    assert final["meta"]["versionId"] == "12"
