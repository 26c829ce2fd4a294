"""Screenings and assessments end to end: FHIR and the JMS API (/v1)."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage.repository import idempotency_t
from tests.builders import FHIR_JSON, jms_person, organization, transaction

pytestmark = pytest.mark.usefixtures("instruments")
TCUDS5 = Path(__file__).resolve().parent.parent / "data" / "tcuds5-example-questionnaire.json"
YES, NO = "LA33-6", "LA32-8"


def dast(yes: set[int]) -> dict[str, str]:
    return {f"dast10-{i}": YES if i in yes else NO for i in range(1, 11)}


def person(pid: str = "P-1") -> dict[str, Any]:
    return jms_person(pid)


def assessment(instrument: str, answers: dict[str, Any], pid: str = "P-1") -> dict[str, Any]:
    return {
        "person": person(pid),
        "instrument": instrument,
        "answers": answers,
        "administered_by": {"id": "S-1", "name": "Jordan Lee", "role": "peer-specialist"},
        "administered_at": "2026-11-20T09:30:00-05:00",
        "intercept": 3,
    }


@pytest.fixture
async def jail(client: httpx.AsyncClient, org_client) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    org = (
        await client.post("/fhir/Organization", json=organization("Jail"), headers=FHIR_JSON)
    ).json()
    return await org_client(f"Organization/{org['id']}")


async def test_instruments_listed_and_rendered(jail: httpx.AsyncClient) -> None:
    listed = (await jail.get("/v1/instruments")).json()
    keys = {i["key"] for i in listed}
    assert {"taps", "audit-c", "dast-10", "overdose-risk"} <= keys
    taps = (await jail.get("/v1/instruments/taps")).json()
    assert taps["copyright"]
    assert taps["items"]
    flat = json.dumps(taps)
    assert "enable_when" in flat and "choices" in flat
    assert (await jail.get("/v1/instruments/nope")).status_code == 404


@pytest.mark.parametrize(
    ("yes", "score", "band"),
    [
        (set(), 1, "dast10-low"),  # item 3 is reverse-scored: "no" scores 1
        ({3}, 0, "dast10-none"),
        ({1, 2}, 3, "dast10-moderate"),
        (set(range(1, 11)), 9, "dast10-severe"),
        (set(range(1, 11)) - {3}, 10, "dast10-severe"),
        ({1, 2, 4, 5, 6}, 6, "dast10-substantial"),
    ],
)
async def test_dast10_scored_on_the_server(
    jail: httpx.AsyncClient, client: httpx.AsyncClient, yes: set[int], score: int, band: str
) -> None:
    r = await jail.post("/v1/assessments", json=assessment("dast-10", dast(yes)))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["score"] == score
    assert body["band"]["code"] == band
    obs_ref = body["observations"][0]
    obs = (await client.get(f"/fhir/{obs_ref}")).json()
    assert obs["valueInteger"] == score
    assert obs["derivedFrom"][0]["reference"] == body["questionnaire_response"]
    assert obs["category"][0]["coding"][0]["code"] == "survey"
    assert obs["code"]["coding"][0]["code"] == "82667-7"  # DAST-10 total score
    qr = (await client.get(f"/fhir/{body['questionnaire_response']}")).json()
    assert qr["subject"]["reference"] == f"Patient/{body['patient_id']}"
    assert qr["extension"][0]["valueCoding"]["code"] == "3"


async def test_overdose_checklist_triage(jail: httpx.AsyncClient) -> None:
    answers = {
        "opioid-use-pre-custody": True,
        "days-in-custody": 45,
        "overdose-ever": True,
        "fentanyl-use": YES,
        "co-use": ["benzodiazepines"],
        "injection-past-12m": False,
        "naloxone-in-hand": False,
        "moud-at-release": "no-moud",
    }
    r = await jail.post("/v1/assessments", json=assessment("overdose-risk", answers))
    assert r.status_code == 201, r.text
    triage = r.json()["triage"]
    assert triage["high_priority"] is True
    assert triage["factors"], triage
    assert triage["rule_version"]


async def test_idempotent_retry_and_concurrent_duplicates(jail: httpx.AsyncClient) -> None:
    payload = assessment("dast-10", dast({1}), pid="P-9")
    headers = {"Idempotency-Key": "assess-123"}
    results = await asyncio.gather(
        *(jail.post("/v1/assessments", json=payload, headers=headers) for _ in range(5))
    )
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["assessment_id"] for r in results}) == 1
    again = await jail.post("/v1/assessments", json=payload, headers=headers)
    assert again.json()["assessment_id"] == results[0].json()["assessment_id"]
    other = await jail.post(
        "/v1/assessments", json=assessment("dast-10", dast({2}), pid="P-9"), headers=headers
    )
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["issue"][0]["diagnostics"]
    history = (await jail.get(f"/v1/people/{results[0].json()['patient_id']}/assessments")).json()
    assert len(history) == 1


async def test_kept_responses_expire_and_are_purged(
    jail: httpx.AsyncClient, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A response is replayed only within HANDOFF_IDEMPOTENCY_RETENTION_HOURS (it holds patient
    data); after that the key is free again, and expired responses are purged in batches."""
    from service.workflows import idempotency

    payload = assessment("dast-10", dast({1}), pid="P-10")
    first = await jail.post("/v1/assessments", json=payload, headers={"Idempotency-Key": "k-old"})
    await jail.post("/v1/assessments", json=payload, headers={"Idempotency-Key": "k-older"})
    async with engine.begin() as conn:  # both responses are now 25 hours old
        await conn.execute(
            update(idempotency_t).values(created=datetime.now(UTC) - timedelta(hours=25))
        )
    again = await jail.post("/v1/assessments", json=payload, headers={"Idempotency-Key": "k-old"})
    assert again.status_code == 201
    assert again.json()["assessment_id"] != first.json()["assessment_id"]  # not replayed
    retry = await jail.post("/v1/assessments", json=payload, headers={"Idempotency-Key": "k-old"})
    assert retry.json()["assessment_id"] == again.json()["assessment_id"]  # fresh: replayed
    # A new keyed request that draws the purge removes the expired response.
    monkeypatch.setattr(idempotency, "PURGE_CHANCE", 1.0)
    await jail.post("/v1/assessments", json=payload, headers={"Idempotency-Key": "k-new"})
    async with engine.connect() as conn:
        kept = (await conn.execute(select(idempotency_t.c.key))).scalars().all()
    assert sorted(kept) == ["k-new", "k-old"]


async def test_purge_takes_a_bounded_batch_of_expired_responses(engine: AsyncEngine) -> None:
    from service.storage import repository as repo

    now = datetime.now(UTC)
    async with engine.begin() as conn:
        for key, age in (("a", 30), ("b", 26), ("c", 25), ("fresh", 1)):
            await repo.save_idempotent_response(
                conn,
                client_id="jms",
                key=key,
                request_hash="h",
                status_code=201,
                body="{}",
                created=now - timedelta(hours=age),
                shown="[]",
            )
    cutoff = now - timedelta(hours=24)
    async with engine.begin() as conn:
        assert await repo.purge_idempotent_responses(conn, before=cutoff, limit=2) == 2
    async with engine.begin() as conn:
        assert await repo.purge_idempotent_responses(conn, before=cutoff, limit=2) == 1
    async with engine.connect() as conn:
        kept = (await conn.execute(select(idempotency_t.c.key))).scalars().all()
    assert kept == ["fresh"]


async def test_same_person_is_matched_not_duplicated(jail: httpx.AsyncClient) -> None:
    a = (await jail.post("/v1/assessments", json=assessment("dast-10", dast(set())))).json()
    later = assessment("dast-10", dast({1}))
    later["administered_at"] = "2026-11-21T09:30:00-05:00"
    b = (await jail.post("/v1/assessments", json=later)).json()
    assert a["patient_id"] == b["patient_id"]
    history = (await jail.get(f"/v1/people/{a['patient_id']}/assessments")).json()
    assert [h["assessment_id"] for h in history] == [b["assessment_id"], a["assessment_id"]]


async def test_jms_validation_lists_every_problem(jail: httpx.AsyncClient) -> None:
    bad = assessment("dast-10", dast(set()))
    bad["person"] = {k: v for k, v in person().items() if k not in ("person_id", "booking_number")}
    bad["intercept"] = 9
    bad["administered_by"]["role"] = "wizard"
    r = await jail.post("/v1/assessments", json=bad)
    assert r.status_code == 422
    text = json.dumps(r.json())
    for fragment in ("person_id", "intercept", "role"):
        assert fragment in text, fragment
    answers = dast(set())
    answers["dast10-1"] = "maybe"
    answers["no-such-item"] = "yes"
    r = await jail.post("/v1/assessments", json=assessment("dast-10", answers))
    assert r.status_code == 422
    issues = r.json()["issue"]
    assert len(issues) >= 2
    assert any("dast10-1" in " ".join(i.get("expression", [])) for i in issues)
    r = await jail.post("/v1/assessments", json=assessment("no-such-instrument", {}))
    assert r.status_code == 422
    # The intercept is a JSON integer, as the OpenAPI says: not a boolean, not a numeric text.
    for wrong in (False, "3", 3.5):
        r = await jail.post(
            "/v1/assessments", json={**assessment("dast-10", dast(set())), "intercept": wrong}
        )
        assert r.status_code == 422 and "intercept" in r.text, (wrong, r.text)
    # Numbers past 64 bits (Python reads them whole; orjson refuses to write them): a clear
    # 422 for the answer, not a server error. Schemathesis found it.
    huge = {**dast(set()), "dast10-1": 2**70, "free": {"n": -(2**80)}}
    for body in (assessment("dast-10", huge), assessment("no-such-instrument", huge)):
        r = await jail.post("/v1/assessments", json=body, headers={"Idempotency-Key": "big"})
        assert r.status_code == 422, r.text
    r = await jail.post("/v1/assessments", json=assessment("overdose-risk", {"x": 2**70}))
    assert r.status_code == 422, r.text


async def test_fhir_response_validated_and_scored(client: httpx.AsyncClient) -> None:
    pat = (
        await client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    ).json()
    qr = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "https://handoff.dev/fhir/Questionnaire/dast-10|1.0.0",
        "status": "completed",
        "subject": {"reference": f"Patient/{pat['id']}"},
        "authored": "2026-11-20T10:00:00Z",
        "item": [
            {
                "linkId": f"dast10-{i}",
                "answer": [{"valueCoding": {"system": "http://loinc.org", "code": NO}}],
            }
            for i in range(1, 11)
        ],
    }
    r = await client.post("/fhir/QuestionnaireResponse", json=qr, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    created = r.json()
    found = (
        await client.get(
            "/fhir/Observation", params={"derived-from": f"QuestionnaireResponse/{created['id']}"}
        )
    ).json()
    assert [e["resource"]["valueInteger"] for e in found["entry"]] == [1]
    # Amend: a new version of the response updates the same Observation (new version).
    amended = copy.deepcopy(created)
    amended["status"] = "amended"
    amended["item"][0]["answer"][0]["valueCoding"]["code"] = YES
    r = await client.put(
        f"/fhir/QuestionnaireResponse/{created['id']}", json=amended, headers=FHIR_JSON
    )
    assert r.status_code == 200, r.text
    found = (
        await client.get(
            "/fhir/Observation", params={"derived-from": f"QuestionnaireResponse/{created['id']}"}
        )
    ).json()
    assert len(found["entry"]) == 1
    obs = found["entry"][0]["resource"]
    assert obs["valueInteger"] == 2 and obs["meta"]["versionId"] == "2"
    # Missing required answers and a wrong type, all reported at once.
    broken = copy.deepcopy(qr)
    broken["item"] = broken["item"][:3]
    broken["item"][0]["answer"] = [{"valueString": "yes"}]
    r = await client.post("/fhir/QuestionnaireResponse", json=broken, headers=FHIR_JSON)
    assert r.status_code == 422
    assert len(r.json()["issue"]) >= 8
    unknown = dict(qr, questionnaire="https://nowhere.example/Questionnaire/x|1")
    r = await client.post("/fhir/QuestionnaireResponse", json=unknown, headers=FHIR_JSON)
    assert r.status_code == 422
    assert "not known" in r.json()["issue"][0]["diagnostics"]


async def test_client_total_is_recomputed_and_noted(client: httpx.AsyncClient) -> None:
    pat = (
        await client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    ).json()
    items = [
        {
            "linkId": f"dast10-{i}",
            "answer": [{"valueCoding": {"system": "http://loinc.org", "code": NO}}],
        }
        for i in range(1, 11)
    ]
    items.append({"linkId": "dast10-score", "answer": [{"valueInteger": 7}]})
    qr = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "https://handoff.dev/fhir/Questionnaire/dast-10|1.0.0",
        "status": "completed",
        "subject": {"reference": f"Patient/{pat['id']}"},
        "item": items,
    }
    r = await client.post("/fhir/QuestionnaireResponse", json=qr, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    found = (
        await client.get(
            "/fhir/Observation", params={"derived-from": f"QuestionnaireResponse/{r.json()['id']}"}
        )
    ).json()
    obs = found["entry"][0]["resource"]
    assert obs["valueInteger"] == 1
    assert "7" in obs["note"][0]["text"]


async def test_site_loaded_questionnaire_end_to_end(
    client: httpx.AsyncClient, jail: httpx.AsyncClient
) -> None:
    questionnaire = json.loads(TCUDS5.read_text())
    questionnaire["id"] = "tcuds5"
    r = await client.put("/fhir/Questionnaire/tcuds5", json=questionnaire, headers=FHIR_JSON)
    assert r.status_code in (200, 201), r.text
    view = (await jail.get("/v1/instruments/tcuds5")).json()
    assert view["items"]
    listed = {i["key"] for i in (await jail.get("/v1/instruments")).json()}
    assert "tcuds5" in listed
    # a non-admin cannot load instruments (directory data)
    r = await jail.put("/fhir/Questionnaire/tcuds5", json=questionnaire, headers=FHIR_JSON)
    assert r.status_code == 403
    # a Questionnaire with broken scoring is refused
    broken = copy.deepcopy(questionnaire)
    broken["id"] = "broken"
    broken["item"].append({"linkId": broken["item"][0]["linkId"], "type": "boolean", "text": "dup"})
    r = await client.put("/fhir/Questionnaire/broken", json=broken, headers=FHIR_JSON)
    assert r.status_code == 422


async def test_builtin_content_is_read_only_for_clients(client: httpx.AsyncClient) -> None:
    """Scoring follows the shipped instruments and the codes the shipped CodeSystems: even an
    administrator may read them but not change them (the service would put them back at its
    next start, silently)."""
    for path in (
        "Questionnaire/dast-10",
        "CodeSystem/warm-handoff-status",
        "ValueSet/yes-no",
    ):
        shipped = await client.get(f"/fhir/{path}")
        assert shipped.status_code == 200
        body = shipped.json()
        etag = {"If-Match": shipped.headers["etag"]}
        attempts = [
            client.put(f"/fhir/{path}", json=dict(body, title="Changed"), headers=FHIR_JSON | etag),
            client.patch(
                f"/fhir/{path}",
                json=[{"op": "replace", "path": "/status", "value": "retired"}],
                headers={"Content-Type": "application/json-patch+json"} | etag,
            ),
            client.delete(f"/fhir/{path}"),
        ]
        for attempt in attempts:
            r = await attempt
            assert r.status_code == 405, (path, r.text)
            assert r.headers["allow"] == "GET"
            assert "built-in content" in r.json()["issue"][0]["diagnostics"]
        after = await client.get(f"/fhir/{path}")
        assert after.json() == body and after.headers["etag"] == shipped.headers["etag"]
    # In a transaction too, and nothing else in it is written.
    bundle = transaction(
        [
            {
                "resource": organization(identifier="builtin-tx"),
                "request": {"method": "POST", "url": "Organization"},
            },
            {"request": {"method": "DELETE", "url": "Questionnaire/taps"}},
        ]
    )
    assert (await client.post("/fhir", json=bundle, headers=FHIR_JSON)).status_code == 405
    orgs = await client.get(
        "/fhir/Organization", params={"identifier": "https://example.org/orgs|builtin-tx"}
    )
    assert orgs.json().get("entry", []) == []
    assert (await client.get("/fhir/Questionnaire/taps")).status_code == 200
    # A program's own instrument stays theirs to change.
    dast = (await client.get("/fhir/Questionnaire/dast-10")).json()
    mine = {k: v for k, v in dast.items() if k not in ("id", "meta")}
    mine["url"] = "https://example.org/fhir/Questionnaire/our-dast"
    created = await client.post("/fhir/Questionnaire", json=mine, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    changed = dict(created.json(), title="Our DAST")
    r = await client.put(
        f"/fhir/Questionnaire/{changed['id']}",
        json=changed,
        headers=FHIR_JSON | {"If-Match": created.headers["etag"]},
    )
    assert r.status_code == 200, r.text
