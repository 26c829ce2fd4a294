"""Conditional create (race-safe) and transaction/batch Bundles."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage.tables import IdempotencyRecord
from tests.builders import FHIR_JSON, organization, patient, task, transaction

IDENT = "identifier=https://jail.example.org/booking|B-77"


async def test_conditional_create_returns_existing(client: httpx.AsyncClient) -> None:
    first = await client.post(
        "/fhir/Patient", json=patient(booking="B-77"), headers={**FHIR_JSON, "If-None-Exist": IDENT}
    )
    assert first.status_code == 201
    again = await client.post(
        "/fhir/Patient", json=patient(booking="B-77"), headers={**FHIR_JSON, "If-None-Exist": IDENT}
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


async def test_conditional_create_ambiguous_is_412(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        await client.post("/fhir/Patient", json=patient(booking="B-9"), headers=FHIR_JSON)
    r = await client.post(
        "/fhir/Patient",
        json=patient(booking="B-9"),
        headers={**FHIR_JSON, "If-None-Exist": "identifier=https://jail.example.org/booking|B-9"},
    )
    assert r.status_code == 412
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_conditional_create_bad_criteria_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "If-None-Exist": "nonsense=1"}
    )
    assert r.status_code == 400


async def test_conditional_create_refuses_criteria_that_match_anything(
    client: httpx.AsyncClient,
) -> None:
    # A search ignores an empty parameter; a condition must not: "identifier=" would match
    # (and answer with) any Patient instead of creating this one.
    await client.post("/fhir/Patient", json=patient(booking="B-1"), headers=FHIR_JSON)
    for condition, says in (
        ("identifier=", "identifier"),
        ("identifier=&family=Doe", "identifier"),
        ("_count=1", "no search criteria"),
    ):
        r = await client.post(
            "/fhir/Patient",
            json=patient(booking="B-2"),
            headers={**FHIR_JSON, "If-None-Exist": condition},
        )
        assert r.status_code == 400, (condition, r.text)
        assert says in r.json()["issue"][0]["diagnostics"]
    found = await client.get("/fhir/Patient", params={"identifier": "B-2"})
    assert found.json().get("entry") is None  # nothing created by the refused requests


async def test_twenty_concurrent_conditional_creates_make_one(client: httpx.AsyncClient) -> None:
    async def attempt() -> httpx.Response:
        return await client.post(
            "/fhir/Patient",
            json=patient(booking="B-77"),
            headers={**FHIR_JSON, "If-None-Exist": IDENT},
        )

    results = await asyncio.gather(*(attempt() for _ in range(20)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * 19 + [201], statuses
    assert len({r.json()["id"] for r in results}) == 1
    found = (
        await client.get(
            "/fhir/Patient",
            params={"identifier": "https://jail.example.org/booking|B-77", "_total": "accurate"},
        )
    ).json()
    assert found["total"] == 1


async def test_transaction_resolves_urn_references(client: httpx.AsyncClient) -> None:
    pat_urn = "urn:uuid:6f1c7a3e-2b8d-4c55-9a51-1f0a8a6f0c01"
    sr_urn = "urn:uuid:6f1c7a3e-2b8d-4c55-9a51-1f0a8a6f0c02"
    sr = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": pat_urn},
    }
    # The Task comes first and refers to entries further down.
    t = task(patient_ref=pat_urn, focus=sr_urn)
    bundle = transaction(
        [
            {
                "fullUrl": "urn:uuid:6f1c7a3e-2b8d-4c55-9a51-1f0a8a6f0c03",
                "resource": t,
                "request": {"method": "POST", "url": "Task"},
            },
            {
                "fullUrl": sr_urn,
                "resource": sr,
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {
                "fullUrl": pat_urn,
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"},
            },
        ]
    )
    r = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 3
    task_out, sr_out, pat_out = (e["resource"] for e in out["entry"])
    assert task_out["for"]["reference"] == f"Patient/{pat_out['id']}"
    assert task_out["focus"]["reference"] == f"ServiceRequest/{sr_out['id']}"
    assert sr_out["subject"]["reference"] == f"Patient/{pat_out['id']}"
    stored = (await client.get(f"/fhir/Task/{task_out['id']}")).json()
    assert stored["focus"]["reference"] == f"ServiceRequest/{sr_out['id']}"


async def test_transaction_with_bad_entry_leaves_nothing(client: httpx.AsyncClient) -> None:
    bad_task = task()
    bad_task["status"] = 17  # wrong JSON type
    bundle = transaction(
        [
            {
                "resource": organization(identifier="tx-org"),
                "request": {"method": "POST", "url": "Organization"},
            },
            {"resource": bad_task, "request": {"method": "POST", "url": "Task"}},
        ]
    )
    r = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 400
    assert "Bundle.entry[1]" in r.json()["issue"][0]["expression"]
    orgs = (
        await client.get(
            "/fhir/Organization", params={"identifier": "https://example.org/orgs|tx-org"}
        )
    ).json()
    assert orgs.get("entry", []) == []


async def test_transaction_failing_in_database_phase_rolls_back(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    bundle = transaction(
        [
            {
                "resource": organization(identifier="tx-org-2"),
                "request": {"method": "POST", "url": "Organization"},
            },
            # stale If-Match: fails only when the database is consulted
            {
                "resource": dict(created, status="accepted"),
                "request": {"method": "PUT", "url": f"Task/{created['id']}", "ifMatch": 'W/"9"'},
            },
        ]
    )
    r = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 412
    orgs = (
        await client.get(
            "/fhir/Organization", params={"identifier": "https://example.org/orgs|tx-org-2"}
        )
    ).json()
    assert orgs.get("entry", []) == []
    assert (await client.get(f"/fhir/Task/{created['id']}")).json()["meta"]["versionId"] == "1"


async def test_batch_entries_are_independent(client: httpx.AsyncClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": organization(identifier="b-1"),
                "request": {"method": "POST", "url": "Organization"},
            },
            {"request": {"method": "GET", "url": "Task/nope"}},
            {
                "resource": {"resourceType": "Organization", "bogus": 1},
                "request": {"method": "POST", "url": "Organization"},
            },
        ],
    }
    r = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 200
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["response"]["status"] == "404"
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["response"]["status"] == "400"


async def test_bundle_type_must_be_transaction_or_batch(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/fhir", json={"resourceType": "Bundle", "type": "collection"}, headers=FHIR_JSON
    )
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Bundle.type"]


# --- Idempotency-Key on FHIR creates and transactions ------------------------------------------


async def count_of(client: httpx.AsyncClient, resource_type: str, **params: str) -> int:
    r = await client.get(f"/fhir/{resource_type}", params={**params, "_summary": "count"})
    return int(r.json()["total"])


async def test_a_retried_create_with_a_key_makes_one_resource(client: httpx.AsyncClient) -> None:
    body = organization(identifier="idem-1")
    keyed = {**FHIR_JSON, "Idempotency-Key": "create-org-1"}
    first = await client.post("/fhir/Organization", json=body, headers=keyed)
    assert first.status_code == 201, first.text
    again = await client.post("/fhir/Organization", json=body, headers=keyed)
    # The same answer as the first time: status, Location, ETag and the resource.
    assert again.status_code == 201
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"] == 'W/"1"'
    assert again.json() == first.json()
    assert await count_of(client, "Organization", identifier="https://example.org/orgs|idem-1") == 1
    # Later versions do not change what a retry answers: the version it created.
    updated = dict(first.json(), name="Renamed")
    assert (
        await client.put(f"/fhir/Organization/{updated['id']}", json=updated, headers=FHIR_JSON)
    ).status_code == 200
    late = await client.post(
        "/fhir/Organization", json=body, headers={**keyed, "Prefer": "return=minimal"}
    )
    assert late.status_code == 201 and late.content == b""
    assert late.headers["etag"] == 'W/"1"'
    # Without a key, a second POST is a second resource (FHIR's create).
    assert (await client.post("/fhir/Organization", json=body, headers=FHIR_JSON)).is_success
    assert await count_of(client, "Organization", identifier="https://example.org/orgs|idem-1") == 2


async def test_a_key_is_for_one_request_and_one_client(
    client: httpx.AsyncClient,
    org_client,  # type: ignore[no-untyped-def]
) -> None:
    keyed = {**FHIR_JSON, "Idempotency-Key": "k-1"}
    assert (
        await client.post("/fhir/Organization", json=organization(identifier="k-a"), headers=keyed)
    ).status_code == 201
    other_body = await client.post(
        "/fhir/Organization", json=organization(identifier="k-b"), headers=keyed
    )
    assert other_body.status_code == 422
    assert other_body.json()["issue"][0]["expression"] == ["Idempotency-Key"]
    assert await count_of(client, "Organization", identifier="https://example.org/orgs|k-b") == 0
    # Another client's key of the same text is its own.
    org = (
        await client.post(
            "/fhir/Organization", json=organization(identifier="k-org"), headers=FHIR_JSON
        )
    ).json()
    other = await org_client(f"Organization/{org['id']}")
    theirs = await other.post("/fhir/Patient", json=patient(booking="K-1"), headers=keyed)
    assert theirs.status_code == 201, theirs.text
    for bad in ("", "x" * 256, "tab\there"):
        r = await client.post(
            "/fhir/Organization",
            json=organization(identifier="k-c"),
            headers={**FHIR_JSON, "Idempotency-Key": bad},
        )
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["issue"][0]["expression"] == ["Idempotency-Key"]


async def test_concurrent_retries_with_one_key_make_one_resource(
    client: httpx.AsyncClient,
) -> None:
    keyed = {**FHIR_JSON, "Idempotency-Key": "burst-1"}
    body = organization(identifier="burst")
    results = await asyncio.gather(
        *(client.post("/fhir/Organization", json=body, headers=keyed) for _ in range(8))
    )
    assert [r.status_code for r in results] == [201] * 8
    assert len({r.json()["id"] for r in results}) == 1
    assert await count_of(client, "Organization", identifier="https://example.org/orgs|burst") == 1


async def test_a_response_kept_before_migration_0009_is_still_replayed_and_audited(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Rows kept before ``shown`` existed (NULL) replay as before, and their AuditEvent names
    the version, found in the kept answer."""
    for key, path, body in (
        ("old-create", "/fhir/Organization", organization(identifier="old-1")),
        (
            "old-tx",
            "/fhir",
            transaction(
                [
                    {
                        "resource": organization(identifier="old-2"),
                        "request": {"method": "POST", "url": "Organization"},
                    }
                ]
            ),
        ),
    ):
        keyed = {**FHIR_JSON, "Idempotency-Key": key}
        first = await client.post(path, json=body, headers=keyed)
        assert first.status_code in (200, 201), first.text
        async with engine.begin() as conn:
            await conn.execute(update(IdempotencyRecord).values(shown=None))
        again = await client.post(path, json=body, headers=keyed)
        assert again.status_code == first.status_code and again.json() == first.json()
        found = await client.get(
            "/fhir/AuditEvent", params={"request-id": again.headers["x-request-id"]}
        )
        [event] = [e["resource"] for e in found.json()["entry"]]
        shown = {(e.get("what") or {}).get("reference", "") for e in event["entity"]}
        assert any(ref.startswith("Organization/") for ref in shown), shown


async def test_a_failed_create_keeps_nothing_under_its_key(client: httpx.AsyncClient) -> None:
    keyed = {**FHIR_JSON, "Idempotency-Key": "fix-and-retry"}
    bad = dict(task(), status="nonsense")
    assert (await client.post("/fhir/Task", json=bad, headers=keyed)).status_code == 400
    fixed = await client.post("/fhir/Task", json=task(), headers=keyed)
    assert fixed.status_code == 201, fixed.text


async def test_a_retried_transaction_with_a_key_writes_once(client: httpx.AsyncClient) -> None:
    bundle = transaction(
        [
            {
                "fullUrl": "urn:uuid:0b0c7a3e-2b8d-4c55-9a51-1f0a8a6f0c01",
                "resource": patient(booking="TX-IDEM"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": organization(identifier="tx-idem"),
                "request": {"method": "POST", "url": "Organization"},
            },
        ]
    )
    keyed = {**FHIR_JSON, "Idempotency-Key": "tx-1"}
    first = await client.post("/fhir", json=bundle, headers=keyed)
    assert first.status_code == 200, first.text
    again = await client.post("/fhir", json=bundle, headers=keyed)
    assert again.status_code == 200 and again.json() == first.json()
    # The replay shows those versions again: its AuditEvent names them.
    found = (
        await client.get("/fhir/AuditEvent", params={"request-id": again.headers["x-request-id"]})
    ).json()
    assert found.get("entry"), (again.headers, found)
    audit = found["entry"][0]["resource"]
    shown = {(e.get("what") or {}).get("reference") for e in audit["entity"]}
    written = {  # Type/id/_history/n, the tail of each location
        "/".join(e["response"]["location"].split("/")[-4:]) for e in first.json()["entry"]
    }
    assert written <= shown, (written, shown)
    assert (
        await count_of(client, "Organization", identifier="https://example.org/orgs|tx-idem") == 1
    )
    assert (
        await count_of(client, "Patient", identifier="https://jail.example.org/booking|TX-IDEM")
        == 1
    )
    # A batch's entries commit one by one: a key cannot cover it, and says what to do instead.
    batch = dict(bundle, type="batch")
    r = await client.post("/fhir", json=batch, headers={**FHIR_JSON, "Idempotency-Key": "b-1"})
    assert r.status_code == 400 and "ifNoneExist" in r.json()["issue"][0]["diagnostics"]
    assert (
        await count_of(client, "Organization", identifier="https://example.org/orgs|tx-idem") == 1
    )


async def new_organization(client: httpx.AsyncClient, identifier: str) -> dict[str, Any]:
    body = organization(identifier=identifier)
    return (await client.post("/fhir/Organization", json=body, headers=FHIR_JSON)).json()


def _binary_patch(operations: object) -> dict:
    import base64

    data = base64.b64encode(json.dumps(operations).encode()).decode()
    return {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}


async def test_batch_reads_searches_patches_and_deletes(client: httpx.AsyncClient) -> None:
    org = await new_organization(client, "bx")
    ref = f"Organization/{org['id']}"
    rename = [{"op": "replace", "path": "/name", "value": "Renamed by a batch"}]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": ref}},
            {"request": {"method": "GET", "url": f"{ref}/_history/1"}},
            {
                "request": {
                    "method": "GET",
                    "url": "Organization?identifier=https://example.org/orgs|bx",
                }
            },
            {
                "resource": _binary_patch(rename),
                "request": {"method": "PATCH", "url": ref, "ifMatch": 'W/"1"'},
            },
            # A Binary whose data is not base64, or not JSON: the entry fails, with a reason.
            {
                "resource": {"resourceType": "Binary", "contentType": "x", "data": "%%%"},
                "request": {"method": "PATCH", "url": ref},
            },
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": "bm90IGpzb24=",  # "not json"
                },
                "request": {"method": "PATCH", "url": ref},
            },
            {"resource": org, "request": {"method": "PATCH", "url": ref}},
            {"request": {"method": "GET", "url": f"{ref}/_history"}},
            {"request": {"method": "DELETE", "url": ref}},
        ],
    }
    r = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    statuses = [e["response"]["status"] for e in entries]
    assert statuses == [
        "200 OK",
        "200 OK",
        "200 OK",
        "200 OK",
        "400",
        "400",
        "400",
        "400",
        "204 No Content",
    ]
    assert entries[0]["resource"]["id"] == org["id"]
    assert entries[2]["resource"]["type"] == "searchset"
    assert [e["resource"]["id"] for e in entries[2]["resource"]["entry"]] == [org["id"]]
    assert entries[3]["resource"]["name"] == "Renamed by a batch"
    for failed in entries[4:8]:
        assert failed["response"]["outcome"]["issue"][0]["diagnostics"]
    assert (await client.get(f"/fhir/{ref}")).status_code == 410


async def test_transaction_patch_entries(client: httpx.AsyncClient) -> None:
    org = await new_organization(client, "tp")
    ref = f"Organization/{org['id']}"
    bad = transaction(
        [
            {
                "resource": organization(identifier="tp-new"),
                "request": {"method": "POST", "url": "Organization"},
            },
            {
                "resource": {"resourceType": "Binary", "contentType": "x", "data": "%%%"},
                "request": {"method": "PATCH", "url": ref},
            },
        ]
    )
    r = await client.post("/fhir", json=bad, headers=FHIR_JSON)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert "not base64" in issue["diagnostics"] and "Bundle.entry[1]" in str(issue["expression"])
    assert await count_of(client, "Organization", identifier="https://example.org/orgs|tp-new") == 0
    good = transaction(
        [
            {
                "resource": _binary_patch([{"op": "add", "path": "/alias", "value": ["TP"]}]),
                "request": {"method": "PATCH", "url": ref, "ifMatch": 'W/"1"'},
            }
        ]
    )
    r = await client.post("/fhir", json=good, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["alias"] == ["TP"]
