"""AuditEvent's ``patient`` parameter, served by its ``entity`` references to Patients."""

from __future__ import annotations

import httpx

from tests.api.test_change_feed import drain_until
from tests.builders import FHIR_JSON, patient, task


async def _ids(client: httpx.AsyncClient, params: dict[str, str]) -> set[str]:
    r = await client.get("/fhir/AuditEvent", params={**params, "_count": "1000"})
    assert r.status_code == 200, r.text
    return {
        e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"
    }


async def _events_naming(client: httpx.AsyncClient, reference: str) -> set[str]:
    r = await client.get("/fhir/AuditEvent", params={"_count": "1000"})
    return {
        e["resource"]["id"]
        for e in r.json()["entry"]
        if any(
            (x.get("what") or {}).get("reference", "").split("/_history/")[0] == reference
            for x in e["resource"]["entity"]
        )
    }


async def test_patient_search_matches_the_events_naming_that_patient(
    client: httpx.AsyncClient,
) -> None:
    made = (await client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)).json()
    other = (await client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)).json()
    ref, other_ref = f"Patient/{made['id']}", f"Patient/{other['id']}"
    made_task = (
        await client.post("/fhir/Task", json=task(patient_ref=ref), headers=FHIR_JSON)
    ).json()
    await client.get(f"/fhir/{ref}")
    await client.get(f"/fhir/Task/{made_task['id']}")

    expected = await _events_naming(client, ref)
    assert len(expected) >= 4  # the two creates and the two reads
    assert await _ids(client, {"patient": ref}) == expected
    assert await _ids(client, {"patient": made["id"]}) == expected  # the id alone
    assert await _ids(client, {"entity": ref}) == expected
    assert await _ids(client, {"patient": other_ref}) == await _events_naming(client, other_ref)
    # Only Patient entities count: a Task named by an event is no patient of it.
    assert await _ids(client, {"patient": f"Task/{made_task['id']}"}) == set()
    everything = await _ids(client, {})
    with_patient = await _ids(client, {"patient:missing": "false"})
    without = await _ids(client, {"patient:missing": "true"})
    assert expected <= with_patient and not with_patient & without
    assert everything <= with_patient | without
    assert everything - expected - with_patient  # events of searches, which name no patient

    # Reverse include and the change feed use the same rows.
    r = await client.get(
        "/fhir/Patient", params={"_id": made["id"], "_revinclude": "AuditEvent:patient"}
    )
    included = {e["resource"]["id"] for e in r.json()["entry"] if e["search"]["mode"] == "include"}
    assert expected <= included
    # (The feed shows a change once older transactions have ended: other tests' may be open.)
    fed, _ = await drain_until(
        client, f"/fhir/AuditEvent?patient={ref}&_cursor=start&_count=1000", len(expected)
    )
    assert {e["resource"]["id"] for e in fed} >= expected
