"""Warm-handoff referrals: the JMS API, the Task state machine and provider actions."""

from __future__ import annotations

import asyncio
import copy
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.builders import (
    FHIR_JSON,
    fhir_consent,
    in_future,
    jms_person,
    jms_referral,
    location,
    organization,
)
from tests.statements import sent_with_parameters, statements_sent

HANDOFF_CS = "https://handoff.dev/fhir/CodeSystem"

pytestmark = pytest.mark.usefixtures("instruments")


def soon(hours: int = 48) -> str:
    return in_future(hours=hours)


@pytest.fixture
async def network(client: httpx.AsyncClient, org_client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    ids = {}
    for key in ("jail", "otp", "peer"):
        org = (
            await client.post("/fhir/Organization", json=organization(key, key), headers=FHIR_JSON)
        ).json()
        ids[key] = f"Organization/{org['id']}"
    return {
        "ids": ids,
        "jail": await org_client(ids["jail"]),
        "otp": await org_client(ids["otp"]),
        "peer": await org_client(ids["peer"]),
    }


def referral(receiver: str, **over: Any) -> dict[str, Any]:
    body = jms_referral(
        receiver,
        referral_id="REF-1",
        person=jms_person("P-1", booking_number="B-1"),
        release={"expected_at": soon(), "location": "Main gate"},
        services=["moud-buprenorphine", "peer-support"],
        priority="urgent",
        notes="Continue buprenorphine 16 mg",
        contact_directly=True,
    )
    body.update(over)
    return body


async def put_task(c: httpx.AsyncClient, task: dict[str, Any], **changes: Any) -> httpx.Response:
    new = copy.deepcopy(task)
    new.update(changes)
    return await c.put(
        f"/fhir/Task/{task['id']}",
        json=new,
        headers={**FHIR_JSON, "If-Match": f'W/"{task["meta"]["versionId"]}"'},
    )


async def test_full_journey(network: dict[str, Any]) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    r = await jail.post("/v1/referrals", json=referral(ids["otp"]))
    assert r.status_code == 201, r.text
    ref = r.json()
    assert ref["status"] == "requested" and ref["owner"] == ids["otp"]
    assert ref["services"] == ["moud-buprenorphine", "peer-support"]
    assert ref["intercept"] == 4
    # The provider polls its Tasks through FHIR search.
    poll = (
        await otp.get(
            "/fhir/Task",
            params={"owner": ids["otp"], "status": "requested", "_include": "Task:focus"},
        )
    ).json()
    tasks = [e["resource"] for e in poll["entry"] if e["resource"]["resourceType"] == "Task"]
    assert [t["id"] for t in tasks] == [ref["task_id"]]
    task = tasks[0]
    assert task["code"]["coding"][0]["code"] == "fulfill" and task["intent"] == "order"
    sr = next(
        e["resource"] for e in poll["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )
    # 42 CFR Part 2: without consent the provider sees that a referral exists, not its SUD details.
    assert "coding" not in sr["code"] and "orderDetail" not in sr
    assert any(t["code"] == "REDACTED" for t in sr["meta"]["tag"])
    assert sr["occurrencePeriod"]["start"]
    r = await jail.post(
        "/v1/consents",
        json={
            "person": referral("x")["person"],
            "signed_at": datetime.now(UTC).isoformat(),
            "signed_by": "Dana Rivera (self)",
            "recipients": [ids["otp"], ids["jail"]],
        },
    )
    assert r.status_code == 201, r.text
    sr = (await otp.get(f"/fhir/ServiceRequest/{sr['id']}")).json()
    assert sr["code"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert {s["code"] for s in sr["meta"]["security"]} >= {"R", "SUD", "42CFRPart2", "NORDSCLCD"}
    # Accept, record milestones, complete with an output.
    r = await put_task(
        otp,
        task,
        status="accepted",
        businessStatus={
            "coding": [
                {
                    "system": "https://handoff.dev/fhir/CodeSystem/warm-handoff-status",
                    "code": "accepted",
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    task = r.json()
    r = await otp.patch(
        f"/fhir/Task/{task['id']}",
        content=json.dumps(
            [
                {"op": "replace", "path": "/status", "value": "in-progress"},
                {
                    "op": "replace",
                    "path": "/businessStatus",
                    "value": {
                        "coding": [
                            {
                                "system": "https://handoff.dev/fhir/CodeSystem/warm-handoff-status",
                                "code": "met-at-release",
                            }
                        ]
                    },
                },
            ]
        ),
        headers={
            "Content-Type": "application/json-patch+json",
            "If-Match": f'W/"{task["meta"]["versionId"]}"',
        },
    )
    assert r.status_code == 200, r.text
    task = r.json()
    r = await put_task(otp, task, status="completed")
    assert r.status_code == 422
    assert "output" in r.json()["issue"][0]["diagnostics"]
    output = [
        {
            "type": {"text": "activity"},
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": "https://handoff.dev/fhir/CodeSystem/handoff-activity",
                        "code": "moud-dose-given",
                    }
                ]
            },
        }
    ]
    r = await put_task(otp, task, status="completed", output=output)
    assert r.status_code == 200, r.text
    # Under the provider's own consent naming the jail, the jail sees the timeline and
    # outcome; the ServiceRequest followed the Task.
    patient = f"Patient/{ref['patient_id']}"
    await fhir_consent(otp, patient, custodian=ids["otp"], recipients=[ids["jail"]])
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    assert view["status"] == "completed"
    assert view["service_request_status"] == "completed"
    assert [e["status"] for e in view["timeline"]] == [
        "requested",
        "accepted",
        "in-progress",
        "completed",
    ]
    assert view["timeline"][1]["by"] == ids["otp"]
    assert view["timeline"][0]["by"] == ids["jail"]
    assert view["outcomes"][0]["activity"] == "moud-dose-given"


async def test_illegal_transitions_and_forbidden_changes(network: dict[str, Any]) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    r = await put_task(
        otp, task, status="completed", output=[{"type": {"text": "x"}, "valueString": "x"}]
    )
    assert r.status_code == 422
    assert "accepted" in r.json()["issue"][0]["diagnostics"]  # names the allowed moves
    r = await put_task(jail, task, status="accepted")
    assert r.status_code == 403  # only the owner accepts
    r = await put_task(otp, task, status="cancelled", statusReason={"text": "no"})
    assert r.status_code == 403  # only the requester cancels
    r = await put_task(otp, task, status="rejected")
    assert r.status_code == 422  # reason required
    r = await put_task(otp, task, status="accepted", priority="stat")
    assert r.status_code == 422
    assert "priority" in r.json()["issue"][0]["diagnostics"]
    r = await put_task(otp, task, status="ready")
    assert r.status_code == 422
    # Not visible: neither updated nor created under that id.
    assert (await put_task(peer, task, status="accepted")).status_code == 409
    r = await put_task(jail, task, status="entered-in-error")
    assert r.status_code == 200


async def test_cancel_after_accept_and_reject_then_re_refer(network: dict[str, Any]) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    assert (await put_task(otp, task, status="accepted")).status_code == 200
    r = await jail.post(
        f"/v1/referrals/{ref['referral_id']}/cancel", json={"reason": "Released to another county"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["service_request_status"] == "revoked"
    # A second referral is rejected at capacity, then re-referred to the peer organization.
    ref2 = (await jail.post("/v1/referrals", json=referral(ids["otp"], referral_id="REF-2"))).json()
    task2 = (await otp.get(f"/fhir/Task/{ref2['task_id']}")).json()
    r = await put_task(
        otp,
        task2,
        status="rejected",
        statusReason={
            "coding": [
                {
                    "system": "https://handoff.dev/fhir/CodeSystem/referral-status-reason",
                    "code": "at-capacity",
                }
            ],
            "text": "No intake slots until January",
        },
    )
    assert r.status_code == 200, r.text
    r = await jail.post(
        f"/v1/referrals/{ref2['referral_id']}/re-refer",
        json={"receiving_organization": ids["peer"]},
    )
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["owner"] == ids["peer"] and view["status"] == "requested"
    assert [t["status"] for t in view["tasks"]] == ["rejected", "requested"]
    assert view["service_request_status"] == "active"
    found = (await peer.get("/fhir/Task", params={"owner": ids["peer"]})).json()
    assert len(found["entry"]) == 1


async def test_idempotent_referrals_and_business_identifier(network: dict[str, Any]) -> None:
    jail, ids = network["jail"], network["ids"]
    body = referral(ids["otp"], referral_id="REF-77")
    results = await asyncio.gather(
        *(
            jail.post("/v1/referrals", json=body, headers={"Idempotency-Key": "k-77"})
            for _ in range(6)
        )
    )
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["referral_id"] for r in results}) == 1
    # Same JMS referral id without a key: the original referral, not a second one.
    again = await jail.post("/v1/referrals", json=body)
    assert again.status_code == 200
    assert again.json()["referral_id"] == results[0].json()["referral_id"]
    concurrent = await asyncio.gather(
        *(
            jail.post("/v1/referrals", json=referral(ids["otp"], referral_id="REF-88"))
            for _ in range(5)
        )
    )
    assert len({r.json()["referral_id"] for r in concurrent}) == 1
    listed = (await jail.get("/v1/referrals")).json()
    assert len(listed) == 2


async def test_a_replayed_referral_is_audited_with_what_it_shows_again(
    network: dict[str, Any], client: httpx.AsyncClient
) -> None:
    """A JMS retry gets the referral, the person included, once more: a disclosure, so the
    replay's AuditEvent names the same records the first request wrote (42 CFR Part 2)."""
    jail, ids = network["jail"], network["ids"]
    body = referral(ids["otp"], referral_id="REF-AUDIT")
    first = await jail.post("/v1/referrals", json=body, headers={"Idempotency-Key": "k-audit"})
    assert first.status_code == 201, first.text
    again = await jail.post("/v1/referrals", json=body, headers={"Idempotency-Key": "k-audit"})
    assert again.status_code == 201 and again.json() == first.json()

    async def named(response: httpx.Response) -> set[str]:
        found = await client.get(
            "/fhir/AuditEvent", params={"request-id": response.headers["x-request-id"]}
        )
        return {
            "/".join(what.split("/")[:2])
            for e in found.json().get("entry", [])
            for entity in e["resource"].get("entity", [])
            if (what := (entity.get("what") or {}).get("reference", ""))
        }

    written = await named(first)
    assert {ref.split("/")[0] for ref in written} >= {"Patient", "ServiceRequest", "Task"}
    assert await named(again) == written


async def test_opened_referral_answer_is_the_same_view_as_a_later_read(
    network: dict[str, Any],
) -> None:
    """The 201 answer is built from what was written, without reading it back: it must be
    exactly what GET /v1/referrals/{id} (and a replay by the JMS referral id) then shows."""
    jail, ids = network["jail"], network["ids"]
    body = referral(ids["otp"], referral_id="REF-VIEW", notes="Bring ID")
    opened = await jail.post("/v1/referrals", json=body)
    assert opened.status_code == 201, opened.text
    read = await jail.get(f"/v1/referrals/{opened.json()['referral_id']}")
    assert read.status_code == 200
    assert opened.json() == read.json()
    [event] = opened.json()["timeline"]
    assert event["status"] == "requested" and event["by"] == ids["jail"]
    replay = await jail.post("/v1/referrals", json=body)
    assert replay.status_code == 200 and replay.json() == read.json()


async def test_person_matched_by_person_id_or_booking_number(network: dict[str, Any]) -> None:
    jail, ids = network["jail"], network["ids"]

    async def refer(ref: str, **person: Any) -> str:
        body = referral(ids["otp"], referral_id=ref)
        body["person"] = {k: v for k, v in {**body["person"], **person}.items() if v is not None}
        r = await jail.post("/v1/referrals", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["patient_id"])

    first = await refer("REF-M1", person_id="P,7", booking_number="B-7")
    # a new booking of the same person (ids may hold commas: matched exactly, not split)
    assert await refer("REF-M2", person_id="P,7", booking_number="B-8") == first
    assert await refer("REF-M3", person_id=None, booking_number="B-8") == first
    assert await refer("REF-M4", person_id="P,7", booking_number=None) == first
    other = await refer("REF-M5", person_id="P-70", booking_number="B-70")
    assert other != first
    # a booking number of someone else never moves a record: a conflict naming both
    body = referral(ids["otp"], referral_id="REF-M6")
    body["person"] = {**body["person"], "person_id": "P-70", "booking_number": "B-7"}
    r = await jail.post("/v1/referrals", json=body)
    assert r.status_code == 422
    assert f"Patient/{first}" in r.text and f"Patient/{other}" in r.text


async def test_person_whose_identifier_was_removed_is_not_matched(
    network: dict[str, Any],
) -> None:
    """Business-key lookups read the identifier's index rows, which keep every version's:
    only a current version that still carries the identifier matches."""
    jail, ids = network["jail"], network["ids"]
    body = referral(ids["otp"], referral_id="REF-R1")
    body["person"] = {**body["person"], "person_id": "P-R", "booking_number": "B-R"}
    first = (await jail.post("/v1/referrals", json=body)).json()["patient_id"]
    patient = (await jail.get(f"/fhir/Patient/{first}")).json()
    patient.pop("identifier")
    r = await jail.put(
        f"/fhir/Patient/{first}",
        json=patient,
        headers={**FHIR_JSON, "If-Match": f'W/"{patient["meta"]["versionId"]}"'},
    )
    assert r.status_code == 200, r.text
    again = await jail.post("/v1/referrals", json={**body, "referral_id": "REF-R2"})
    assert again.status_code == 201 and again.json()["patient_id"] != first


async def test_validation_lists_every_problem(network: dict[str, Any]) -> None:
    jail = network["jail"]
    bad = referral("Organization/does-not-exist")
    bad["services"] = ["moud-buprenorphine", "astrology"]
    bad["release"] = {"expected_at": "2020-01-01T08:00:00-05:00"}
    bad["person"] = {
        k: v for k, v in bad["person"].items() if k not in ("person_id", "booking_number")
    }
    r = await jail.post("/v1/referrals", json=bad)
    assert r.status_code == 422
    text = json.dumps(r.json())
    for fragment in ("services", "release", "person", "past", "person_id"):
        assert fragment in text, fragment
    r = await jail.post("/v1/referrals", json=referral("Organization/does-not-exist"))
    assert r.status_code == 422
    assert "does-not-exist" in r.json()["issue"][0]["diagnostics"]


async def test_dates_must_be_iso_text_and_bodies_json(network: dict[str, Any]) -> None:
    """Pydantic alone reads a bare number as Unix time (release_to=0.5 is 1970): a JMS that
    sends one has a bug, and answering an empty worklist would hide it."""
    jail, ids = network["jail"], network["ids"]
    for params in ({"release_to": "0.5"}, {"release_from": "1700000000"}):
        r = await jail.get("/v1/referrals", params=params)
        assert r.status_code == 422, r.text
        assert "ISO 8601 date-time" in r.json()["issue"][0]["diagnostics"]
    r = await jail.get("/v1/referrals", params={"release_to": "2020-01-01T00:00:00"})
    assert r.status_code == 422 and "time zone" in r.text
    # A "+" written unencoded in the query string arrives as a space: say so.
    r = await jail.get("/v1/referrals?release_from=2026-11-26T09:30:00+01:00")
    assert r.status_code == 422, r.text
    said = r.json()["issue"][0]["diagnostics"]
    assert said.startswith("release_from: ") and "%2B" in said and "Z" in said, said
    assert "or date" not in said
    r = await jail.get("/v1/referrals", params={"release_from": "2026-13-01T00:00:00Z"})
    said = r.json()["issue"][0]["diagnostics"]
    assert r.status_code == 422 and "ISO 8601 date-time with a time zone" in said
    assert "or date" not in said and "%2B" not in said
    encoded = await jail.get("/v1/referrals?release_from=2026-11-26T09:30:00%2B01:00")
    assert encoded.status_code == 200, encoded.text
    person = {**referral(ids["otp"])["person"], "birth_date": 0}
    r = await jail.post("/v1/referrals", json=referral(ids["otp"], person=person))
    assert r.status_code == 422 and "ISO 8601 date such as" in r.text
    r = await jail.post(
        "/v1/referrals", json=referral(ids["otp"], release={"expected_at": 4102444800})
    )
    assert r.status_code == 422 and "ISO 8601 date-time" in r.text
    # Not JSON at all: a 400 that says where, not a list of rules.
    r = await jail.post(
        "/v1/referrals", content=b'{"person": ', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["issue"][0]["diagnostics"].startswith("The body is not valid JSON")
    r = await jail.post(
        "/v1/referrals", content=b"\xc3\x28", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["issue"][0]["diagnostics"]
    # Such a body fails before the caller is known: an anonymous one is still refused.
    anonymous = await jail.post(
        "/v1/referrals",
        content=b'{"person": ',
        headers={"Content-Type": "application/json", "Authorization": ""},
    )
    assert anonymous.status_code == 401
    # Nothing was stored by any of these.
    assert (await jail.get("/v1/referrals")).json() == []


async def test_re_refer_names_exactly_one_receiver(network: dict[str, Any]) -> None:
    jail, ids = network["jail"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    url = f"/v1/referrals/{ref['referral_id']}/re-refer"
    both = {"receiving_organization": ids["peer"], "receiving_service": "HealthcareService/x"}
    for body in ({}, both):
        r = await jail.post(url, json=body)
        assert r.status_code == 422, r.text
        assert "exactly one of receiving_organization" in r.text


async def test_worklist_and_escalations(network: dict[str, Any]) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    a = (
        await jail.post(
            "/v1/referrals",
            json=referral(ids["otp"], referral_id="A", release={"expected_at": soon(24)}),
        )
    ).json()
    b = (
        await jail.post(
            "/v1/referrals",
            json=referral(ids["otp"], referral_id="B", release={"expected_at": soon(200)}),
        )
    ).json()
    c = (
        await jail.post(
            "/v1/referrals",
            json=referral(ids["otp"], referral_id="C", release={"expected_at": soon(30)}),
        )
    ).json()
    task_c = (await otp.get(f"/fhir/Task/{c['task_id']}")).json()
    await put_task(otp, task_c, status="accepted")
    now = datetime.now(UTC)
    listed = (
        await jail.get(
            "/v1/referrals",
            params={
                "release_from": now.isoformat(),
                "release_to": (now + timedelta(hours=72)).isoformat(),
                "status": "requested",
            },
        )
    ).json()
    assert [v["referral_id"] for v in listed] == [a["referral_id"]]
    esc = (await jail.get("/v1/referrals/escalations", params={"within_hours": 72})).json()
    assert [v["referral_id"] for v in esc] == [a["referral_id"]]
    assert b["referral_id"] not in {v["referral_id"] for v in esc}
    # The provider does not see the jail's worklist through /v1 (it is the requester's list).
    assert (await otp.get("/v1/referrals")).json() == []


async def test_worklist_window_is_the_expected_release(network: dict[str, Any]) -> None:
    """A release window without an end is open-ended in FHIR's Period comparison; the worklist
    must still select by the expected release, or a referral released last month would sit in
    every "next 72 hours" list."""
    jail, ids = network["jail"], network["ids"]
    made = {}
    for name, hours in (("past-soon", 1), ("in-window", 30), ("later", 200)):
        body = referral(ids["otp"], referral_id=name, release={"expected_at": soon(hours)})
        body["person"] = {**body["person"], "person_id": f"P-{name}", "booking_number": name}
        made[name] = (await jail.post("/v1/referrals", json=body)).json()["referral_id"]
    now = datetime.now(UTC)
    listed = (
        await jail.get(
            "/v1/referrals",
            params={
                "release_from": (now + timedelta(hours=2)).isoformat(),
                "release_to": (now + timedelta(hours=72)).isoformat(),
            },
        )
    ).json()
    assert [v["referral_id"] for v in listed] == [made["in-window"]]
    # A closed window that began before the range and ends inside it is not in it either.
    start, end = soon(-30), soon(40)
    sr_id = made["later"]
    sr = (await jail.get(f"/fhir/ServiceRequest/{sr_id}")).json()
    sr["occurrencePeriod"] = {"start": start, "end": end}
    r = await jail.put(
        f"/fhir/ServiceRequest/{sr_id}",
        json=sr,
        headers={**FHIR_JSON, "If-Match": f'W/"{sr["meta"]["versionId"]}"'},
    )
    assert r.status_code == 200, r.text
    esc = (await jail.get("/v1/referrals/escalations", params={"within_hours": 72})).json()
    # released 30 hours ago (outside "passed in the last day"): no longer an escalation
    assert made["later"] not in {v["referral_id"] for v in esc}
    assert {made["past-soon"], made["in-window"]} <= {v["referral_id"] for v in esc}


async def test_worklist_reads_every_page_up_to_its_limit(
    network: dict[str, Any], monkeypatch: pytest.MonkeyPatch, app: Any
) -> None:
    from service.features import referrals as referral_workflow

    monkeypatch.setattr(referral_workflow, "WORKLIST_PAGE_SIZE", 2)
    jail, ids = network["jail"], network["ids"]
    for n in range(5):
        body = referral(ids["otp"], referral_id=f"R-{n}", release={"expected_at": soon(10 + n)})
        body["person"] = {**body["person"], "person_id": f"P-{n}", "booking_number": f"B-{n}"}
        assert (await jail.post("/v1/referrals", json=body)).status_code == 201
    listed = (await jail.get("/v1/referrals")).json()
    assert [v["release"]["expected_at"] for v in listed] == sorted(
        v["release"]["expected_at"] for v in listed
    )
    assert len(listed) == 5
    # More referrals than a worklist lists: refused (never cut short), saying what to do.
    app.state.settings = app.state.settings.model_copy(update={"worklist_max_referrals": 4})
    r = await jail.get("/v1/referrals")
    assert r.status_code == 422, r.text
    [issue] = r.json()["issue"]
    assert issue["code"] == "too-costly" and "More than 4 referrals" in issue["diagnostics"]
    assert issue["expression"] == ["release_from", "release_to"]
    now = datetime.now(UTC)
    window = {
        "release_from": now.isoformat(),
        "release_to": (now + timedelta(hours=12, minutes=30)).isoformat(),
    }
    narrowed = await jail.get("/v1/referrals", params=window)
    assert narrowed.status_code == 200 and len(narrowed.json()) == 3  # 10, 11 and 12 hours
    # Escalations look at most 15 days ahead: bounded by their own window, not refused.
    esc = await jail.get("/v1/referrals/escalations", params={"within_hours": 72})
    assert esc.status_code == 200 and len(esc.json()) == 5


@pytest.mark.performance_contract
async def test_worklist_views_and_statement_count(
    network: dict[str, Any], engine: AsyncEngine
) -> None:
    """Each referral in the worklist shows its own Tasks (a re-referral shows both), and the
    worklist costs the same number of statements for 2 referrals as for 6 (it looked up each
    referral's Tasks one by one)."""
    jail, otp, ids = network["jail"], network["otp"], network["ids"]

    async def open_referral(n: int) -> dict[str, Any]:
        body = referral(ids["otp"], referral_id=f"W-{n}", release={"expected_at": soon(10 + n)})
        body["person"] = {**body["person"], "person_id": f"P-{n}", "booking_number": f"B-{n}"}
        return (await jail.post("/v1/referrals", json=body)).json()  # type: ignore[no-any-return]

    async def worklist() -> tuple[list[dict[str, Any]], int]:
        with statements_sent(engine) as statements:
            r = await jail.get("/v1/referrals")
        assert r.status_code == 200, r.text
        return r.json(), len(statements)

    made = [await open_referral(n) for n in range(2)]
    _, few = await worklist()
    made += [await open_referral(n) for n in range(2, 6)]
    # W-1 rejected and re-referred to the peer organization: two Tasks, the newer one current
    task = (await otp.get(f"/fhir/Task/{made[1]['task_id']}")).json()
    reason = {
        "text": "No slots",
        "coding": [{"system": f"{HANDOFF_CS}/referral-status-reason", "code": "at-capacity"}],
    }
    assert (await put_task(otp, task, status="rejected", statusReason=reason)).status_code == 200
    r = await jail.post(
        f"/v1/referrals/{made[1]['referral_id']}/re-refer",
        json={"receiving_organization": ids["peer"]},
    )
    assert r.status_code == 200, r.text
    # W-2 accepted
    task = (await otp.get(f"/fhir/Task/{made[2]['task_id']}")).json()
    assert (await put_task(otp, task, status="accepted")).status_code == 200
    views, many = await worklist()
    assert many == few
    by_id = {v["jms_referral_id"]: v for v in views}
    assert len(by_id) == 6
    assert [t["status"] for t in by_id["W-1"]["tasks"]] == ["rejected", "requested"]
    assert by_id["W-1"]["owner"] == ids["peer"] and by_id["W-1"]["status"] == "requested"
    assert by_id["W-2"]["status"] == "accepted"
    for n in (0, 3, 4, 5):
        view = by_id[f"W-{n}"]
        assert view["task_id"] == made[n]["task_id"] and view["status"] == "requested"


async def test_referring_facility_is_checked_shown_and_filtered(
    network: dict[str, Any], client: httpx.AsyncClient
) -> None:
    jail, ids = network["jail"], network["ids"]
    units = []
    for name in ("Main jail", "Annex"):
        r = await client.post(
            "/fhir/Location", json={"resourceType": "Location", "name": name}, headers=FHIR_JSON
        )
        units.append(f"Location/{r.json()['id']}")
    made = {}
    for n, unit in enumerate([units[0], units[1], units[0]]):
        body = referral(ids["otp"], referral_id=f"F-{n}", facility=unit)
        body["person"] = {**body["person"], "person_id": f"P-{n}", "booking_number": f"B-{n}"}
        r = await jail.post("/v1/referrals", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["facility"] == unit
        made[n] = r.json()["referral_id"]
    listed = (await jail.get("/v1/referrals", params={"facility": units[0]})).json()
    assert {v["referral_id"] for v in listed} == {made[0], made[2]}
    # A facility is a Location or an Organization; every wrong reference is named at once.
    patient = (await jail.get(f"/v1/referrals/{made[0]}")).json()["patient_id"]
    body = referral(f"Location/{units[1].split('/')[1]}", facility=f"Patient/{patient}")
    r = await jail.post("/v1/referrals", json=body)
    assert r.status_code == 422
    paths = {tuple(i["expression"]) for i in r.json()["issue"]}
    assert {("facility",), ("receiving_organization",)} <= paths, r.text
    assert "Location/<id> or Organization/<id>" in r.text


async def test_cancel_applies_to_an_update_committed_meanwhile(
    network: dict[str, Any], engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider accepts between the jail's cancel finding the Task and changing it: the
    cancel applies to the accepted Task (cancel after accept is allowed) instead of failing
    with a 412 the JMS never asked for (it sent no If-Match)."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: the cancel's transaction excludes the accept")
    from service.features import referrals as referral_workflow

    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    found_task = referral_workflow._current_task

    async def provider_accepts_meanwhile(*args: Any, **kwargs: Any) -> dict[str, Any]:
        found = await found_task(*args, **kwargs)
        task = (await otp.get(f"/fhir/Task/{found['id']}")).json()
        assert (await put_task(otp, task, status="accepted")).status_code == 200
        return found

    monkeypatch.setattr(referral_workflow, "_current_task", provider_accepts_meanwhile)
    r = await jail.post(f"/v1/referrals/{ref['referral_id']}/cancel", json={"reason": "Moved"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    statuses = [e["status"] for e in r.json()["timeline"]]
    assert statuses[-2:] == ["accepted", "cancelled"]


async def test_person_upsert_applies_to_an_update_committed_meanwhile(
    network: dict[str, Any], engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second referral for a known person updates their Patient; an update of that Patient
    committed (here through FHIR) after the match must not make the JMS's referral a 412."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: the referral's transaction excludes the update")
    from service.features import people as people

    jail, ids = network["jail"], network["ids"]
    first = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    match = people.wf.find_by_first_identifier

    async def updated_meanwhile(*args: Any, **kwargs: Any) -> Any:
        found = await match(*args, **kwargs)
        if args[2] == "Patient" and found:
            patient = (await jail.get(f"/fhir/Patient/{first['patient_id']}")).json()
            patient["gender"] = "unknown"
            r = await jail.put(
                f"/fhir/Patient/{patient['id']}",
                json=patient,
                headers={**FHIR_JSON, "If-Match": f'W/"{patient["meta"]["versionId"]}"'},
            )
            assert r.status_code == 200, r.text
        return found

    monkeypatch.setattr(people.wf, "find_by_first_identifier", updated_meanwhile)
    body = referral(ids["peer"], referral_id="REF-2")
    body["person"] = {**body["person"], "phone": "555-0199"}
    r = await jail.post("/v1/referrals", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["patient_id"] == first["patient_id"]


@pytest.mark.performance_contract
async def test_referral_writes_lock_tasks_before_their_service_request(
    network: dict[str, Any], engine: AsyncEngine
) -> None:
    """A provider's Task update locks the Task, then (completing or cancelling) the rule locks
    its ServiceRequest. A release change takes them in the same order, or the two could
    deadlock."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite takes no row locks")
    jail, ids = network["jail"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    with sent_with_parameters(engine) as sent:
        r = await jail.patch(
            f"/v1/referrals/{ref['referral_id']}", json={"release": {"expected_at": soon(60)}}
        )
    locks = [
        p
        for statement, parameters in sent
        if "FOR UPDATE" in statement
        for p in parameters
        if p in ("Task", "ServiceRequest")
    ]
    assert r.status_code == 200, r.text
    assert locks[:2] == ["Task", "ServiceRequest"], locks


async def test_retried_re_refer_and_cancel_answer_what_was_done(
    network: dict[str, Any],
) -> None:
    """A JMS retries when an answer is lost, and users double-click: a repeated re-referral to
    the same organization, or a repeated cancel, answers the referral as it now is (one new
    Task, one cancellation) instead of an error or a 412."""
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    reason = {
        "text": "No slots",
        "coding": [{"system": f"{HANDOFF_CS}/referral-status-reason", "code": "at-capacity"}],
    }
    assert (await put_task(otp, task, status="rejected", statusReason=reason)).status_code == 200
    url = f"/v1/referrals/{ref['referral_id']}/re-refer"
    answers = await asyncio.gather(
        *(jail.post(url, json={"receiving_organization": ids["peer"]}) for _ in range(2))
    )
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    again = await jail.post(url, json={"receiving_organization": ids["peer"]})
    assert again.status_code == 200
    assert [t["status"] for t in again.json()["tasks"]] == ["rejected", "requested"]
    # To another organization while the re-referral is open: refused, and why.
    other = await jail.post(url, json={"receiving_organization": ids["otp"]})
    assert other.status_code == 422 and "still has an open Task" in other.text
    # The original Task open, re-refer to its own owner: not a retry, refused.
    ref2 = (await jail.post("/v1/referrals", json=referral(ids["otp"], referral_id="R2"))).json()
    same = await jail.post(
        f"/v1/referrals/{ref2['referral_id']}/re-refer",
        json={"receiving_organization": ids["otp"]},
    )
    assert same.status_code == 422
    cancel = f"/v1/referrals/{ref['referral_id']}/cancel"
    answers = await asyncio.gather(
        *(jail.post(cancel, json={"reason": "Released to another county"}) for _ in range(2))
    )
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    timeline = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()["timeline"]
    assert [e["status"] for e in timeline].count("cancelled") == 1


async def test_release_change(network: dict[str, Any]) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    new_time = soon(96)
    r = await jail.patch(
        f"/v1/referrals/{ref['referral_id']}", json={"release": {"expected_at": new_time}}
    )
    assert r.status_code == 200, r.text
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    assert task["restriction"]["period"]["start"] == new_time
    # The same release again (a JMS resends what it sent): nothing new is written.
    sr_version = (await jail.get(f"/fhir/ServiceRequest/{ref['referral_id']}")).json()["meta"]
    r = await jail.patch(
        f"/v1/referrals/{ref['referral_id']}", json={"release": {"expected_at": new_time}}
    )
    assert r.status_code == 200, r.text
    again = (await jail.get(f"/fhir/ServiceRequest/{ref['referral_id']}")).json()["meta"]
    assert again["versionId"] == sr_version["versionId"]
    assert (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()["meta"] == task["meta"]
    r = await jail.patch(
        f"/v1/referrals/{ref['referral_id']}",
        json={"release": {"expected_at": "2001-01-01T00:00:00Z"}},
    )
    assert r.status_code == 422


async def test_referral_through_fhir_transaction(network: dict[str, Any]) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": {"resourceType": "Patient", "name": [{"family": "Okafor"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                    "requester": {"reference": ids["jail"]},
                    "performer": [{"reference": ids["otp"]}],
                    "extension": [
                        {
                            "url": "https://handoff.dev/fhir/StructureDefinition/sim-intercept",
                            "valueCoding": {
                                "system": "https://handoff.dev/fhir/CodeSystem/sim-intercept",
                                "code": "4",
                            },
                        }
                    ],
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {
                "resource": {
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "code": {
                        "coding": [
                            {
                                "system": "http://hl7.org/fhir/CodeSystem/task-code",
                                "code": "fulfill",
                            }
                        ]
                    },
                    "focus": {"reference": "urn:uuid:22222222-2222-4222-8222-222222222222"},
                    "for": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                    "authoredOn": "2026-11-26T10:00:00Z",
                    "requester": {"reference": ids["jail"]},
                    "owner": {"reference": ids["otp"]},
                },
                "request": {"method": "POST", "url": "Task"},
            },
        ],
    }
    r = await jail.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    poll = (await otp.get("/fhir/Task", params={"owner": ids["otp"], "status": "requested"})).json()
    assert len(poll["entry"]) == 1
    # The same rules apply: a Task created as 'accepted' or without a focus is refused.
    bad = copy.deepcopy(bundle)
    bad["entry"][2]["resource"]["status"] = "accepted"
    r = await jail.post("/fhir", json=bad, headers=FHIR_JSON)
    assert r.status_code == 422


async def test_a_jms_body_must_be_declared_json(network: dict[str, Any]) -> None:
    """curl -d sends a form by default; FastAPI would read it as no body and list missing
    fields. The answer says what is wrong: the Content-Type."""
    jail = network["jail"]
    for ctype in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Content-Type": ctype} if ctype else {}
        r = await jail.post(
            "/v1/referrals/x/cancel", content=b'{"reason": "moved"}', headers=headers
        )
        assert r.status_code == 415, (ctype, r.text)
        assert "application/json" in r.json()["issue"][0]["diagnostics"]
    r = await jail.post("/v1/referrals/x/cancel", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["issue"][0]["diagnostics"] == (
        "body: the request has no body; send the JSON that /docs shows"
    )


async def test_supporting_information_must_be_held_and_visible(network: dict[str, Any]) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]

    async def observation(c: httpx.AsyncClient, text: str) -> dict[str, Any]:
        body = {"resourceType": "Observation", "status": "final", "code": {"text": text}}
        return (await c.post("/fhir/Observation", json=body, headers=FHIR_JSON)).json()

    mine = await observation(jail, "Screening note")
    gone = await observation(jail, "Old")
    assert (await jail.delete(f"/fhir/Observation/{gone['id']}")).status_code in (200, 204)
    theirs = await observation(otp, "Theirs")
    body = referral(
        ids["otp"],
        supporting_info=[
            f"Observation/{mine['id']}",
            "Observation/never-was",
            f"Observation/{gone['id']}",
            f"Observation/{theirs['id']}",
        ],
    )
    r = await jail.post("/v1/referrals", json=body)
    assert r.status_code == 422, r.text
    # Every problem at once, each naming its place; the jail's own record passes.
    by_place = {tuple(i["expression"]): i["diagnostics"] for i in r.json()["issue"]}
    assert set(by_place) == {
        ("supporting_info[1]",),
        ("supporting_info[2]",),
        ("supporting_info[3]",),
    }
    assert "not known here" in by_place[("supporting_info[1]",)]
    assert "not a reference this server holds" in by_place[("supporting_info[2]",)]  # deleted
    assert "not known here (or not yours)" in by_place[("supporting_info[3]",)]
    ok = await jail.post(
        "/v1/referrals", json=referral(ids["otp"], supporting_info=[f"Observation/{mine['id']}"])
    )
    assert ok.status_code == 201, ok.text


async def test_worklist_items_say_who_where_and_to_whom(
    network: dict[str, Any], client: httpx.AsyncClient
) -> None:
    """A worklist line carries the person's name and booking number, the receiving
    organization's name, services, release, status; as JSON (the documented schema) or CSV."""
    from pydantic import TypeAdapter

    from service.api.routes.v1_views import ReferralView

    jail, ids = network["jail"], network["ids"]
    site = await client.post(  # directory data: written by an administrator
        "/fhir/Location",
        json=location("County Jail, Main Facility", organization=ids["jail"]),
        headers=FHIR_JSON,
    )
    assert site.status_code == 201, site.text
    facility = f"Location/{site.json()['id']}"
    made = await jail.post("/v1/referrals", json=referral(ids["otp"], facility=facility))
    assert made.status_code == 201, made.text
    listed = await jail.get("/v1/referrals")
    assert listed.status_code == 200, listed.text
    [item] = listed.json()
    TypeAdapter(list[ReferralView]).validate_python(listed.json())
    assert item["person"] == {
        "family_name": "Rivera",
        "given_names": ["Dana"],
        "booking_number": "B-1",
    }
    assert item["receiving_organization_name"] == "otp"
    assert item["facility"] == facility
    assert item["facility_name"] == "County Jail, Main Facility"
    assert item["owner"] == ids["otp"]
    assert item["services"] == ["moud-buprenorphine", "peer-support"]
    as_csv = await jail.get("/v1/referrals", params={"format": "csv"})
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    header, row = list(csv.reader(io.StringIO(as_csv.text)))
    line = dict(zip(header, row, strict=True))
    assert line["family_name"] == "Rivera" and line["booking_number"] == "B-1"
    assert line["receiving_organization_name"] == "otp" and line["status"] == "requested"
    assert line["facility_name"] == "County Jail, Main Facility"
    assert line["services"] == "moud-buprenorphine peer-support"
    negotiated = await jail.get("/v1/referrals", headers={"Accept": "text/csv"})
    assert negotiated.text == as_csv.text
    # Another organization's worklist never shows this person.
    assert (await network["peer"].get("/v1/referrals")).json() == []


async def test_worklist_pages_follow_the_next_link(network: dict[str, Any]) -> None:
    """With ``limit``, a worklist comes in pages linked by ``Link: rel="next"``; the pages hold
    every referral once, in order, even when one is added between pages."""
    jail, ids = network["jail"], network["ids"]
    made = []
    for n in range(5):
        body = referral(
            ids["otp"],
            referral_id=f"REF-PAGE-{n}",
            release={"expected_at": soon(24 + n)},
        )
        body["person"] = {**body["person"], "person_id": f"P-PG{n}", "booking_number": f"B-PG{n}"}
        r = await jail.post("/v1/referrals", json=body)
        assert r.status_code == 201, r.text
        made.append(r.json()["referral_id"])
    everything = (await jail.get("/v1/referrals")).json()
    assert [v["referral_id"] for v in everything] == made  # soonest release first
    seen: list[str] = []
    url: str | None = "/v1/referrals?limit=2"
    pages = 0
    while url is not None:
        r = await jail.get(url)
        assert r.status_code == 200, r.text
        assert len(r.json()) <= 2
        seen.extend(v["referral_id"] for v in r.json())
        link = r.headers.get("link")
        url = link[link.index("<") + 1 : link.index(">")] if link else None
        assert link is None or link.endswith('rel="next"')
        pages += 1
        if pages == 1:  # a referral released later than all others arrives meanwhile
            body = referral(ids["otp"], referral_id="REF-PAGE-late")
            body["release"] = {"expected_at": soon(24 * 30)}
            body["person"] = {**body["person"], "person_id": "P-PGL", "booking_number": "B-PGL"}
            late = await jail.post("/v1/referrals", json=body)
            assert late.status_code == 201, late.text
            made.append(late.json()["referral_id"])
    assert seen == made and pages == 3
    # CSV pages the same way; a cursor that is not one is refused with a clear message.
    first = await jail.get("/v1/referrals", params={"limit": 2, "format": "csv"})
    assert len(list(csv.reader(io.StringIO(first.text)))) == 3 and "link" in first.headers
    bad = await jail.get("/v1/referrals", params={"after": "not-a-cursor"})
    assert bad.status_code == 422
    assert "follow the next link" in bad.json()["issue"][0]["diagnostics"]
    assert (await jail.get("/v1/referrals", params={"limit": 0})).status_code == 422
