"""Follow-up plans: a recorded release gives each accepted peer-support or treatment referral
the follow-up Tasks of its program's plan (built-in default, or the program's own
PlanDefinition), once, whatever the retries and corrections; only the program sees them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api.test_custody import at, booking, milestone, refer_from_stay
from tests.api.test_referrals import network, put_task  # noqa: F401
from tests.builders import FHIR_JSON

pytestmark = pytest.mark.usefixtures("instruments")

CONTACT = "https://handoff.dev/fhir/CodeSystem/follow-up|follow-up-contact"


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def accepted(net: dict[str, Any], receiver: str = "otp", **over: Any) -> dict[str, Any]:
    jail, ids = net["jail"], net["ids"]
    r = await jail.post("/v1/bookings", json=booking(expected_release_at=at(2)))
    assert r.status_code in (200, 201), r.text
    ref = await refer_from_stay(jail, ids[receiver], **over)
    task = (await net[receiver].get(f"/fhir/Task/{ref['task_id']}")).json()
    r = await put_task(net[receiver], task, status="accepted", businessStatus=milestone("accepted"))
    assert r.status_code == 200, r.text
    return ref


async def release(jail: httpx.AsyncClient, when: str) -> None:
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={"released_at": when, "planned": True, "release_type": "end-of-sentence"},
    )
    assert r.status_code == 200, r.text


async def follow_ups(c: httpx.AsyncClient, ref: dict[str, Any]) -> list[dict[str, Any]]:
    found = (
        await c.get(
            "/fhir/Task",
            params={
                "based-on": f"ServiceRequest/{ref['referral_id']}",
                "code": CONTACT,
                "_count": 50,
            },
        )
    ).json()
    tasks = [e["resource"] for e in found.get("entry", [])]
    return sorted(tasks, key=lambda t: t["restriction"]["period"]["end"])


async def test_a_release_makes_the_default_plan_once(network: dict[str, Any]) -> None:  # noqa: F811
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    ref = await accepted(network)
    released = at(-1)
    await release(jail, released)
    tasks = await follow_ups(otp, ref)
    offsets = [instant(t["restriction"]["period"]["end"]) - instant(released) for t in tasks]
    assert offsets == [
        timedelta(hours=24),
        timedelta(hours=72),
        timedelta(days=7),
        timedelta(days=14),
        timedelta(days=30),
    ]
    for t in tasks:
        assert t["status"] == "ready" and t["intent"] == "plan"
        assert t["owner"] == {"reference": ids["otp"]} == t["requester"]
        assert t["for"] == {"reference": f"Patient/{ref['patient_id']}"}
        assert "42CFRPart2" in {s["code"] for s in t["meta"]["security"]}
    # The built-in plan is readable, and not changeable.
    plan = (await otp.get("/fhir/PlanDefinition/post-release-follow-up")).json()
    assert plan["action"][0]["id"] == "contact-24h"
    r = await otp.put("/fhir/PlanDefinition/post-release-follow-up", json=plan, headers=FHIR_JSON)
    assert r.status_code == 405
    # Sent again, or corrected: the same five Tasks, due after the corrected release.
    await release(jail, released)
    assert [t["id"] for t in await follow_ups(otp, ref)] == [t["id"] for t in tasks]
    corrected = at(-2)
    await release(jail, corrected)
    moved = await follow_ups(otp, ref)
    assert [t["id"] for t in moved] == [t["id"] for t in tasks]
    assert instant(moved[0]["restriction"]["period"]["end"]) - instant(corrected) == timedelta(
        hours=24
    )
    # Withdrawn, they are cancelled; recorded again, they are open again (still five).
    assert (await jail.post("/v1/bookings/B-1/release/cancel")).status_code == 200
    assert {t["status"] for t in await follow_ups(otp, ref)} == {"cancelled"}
    await release(jail, corrected)
    assert {t["status"] for t in await follow_ups(otp, ref)} == {"ready"}
    assert len(await follow_ups(otp, ref)) == 5
    # Neither the jail nor another program sees them.
    assert await follow_ups(jail, ref) == []
    assert await follow_ups(peer, ref) == []
    assert (await jail.get(f"/fhir/Task/{tasks[0]['id']}")).status_code == 404


async def test_no_plan_for_other_services_or_unaccepted_referrals(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    await jail.post("/v1/bookings", json=booking(expected_release_at=at(2)))
    ref = await refer_from_stay(jail, ids["otp"])  # not accepted
    await release(jail, at(-1))
    assert await follow_ups(otp, ref) == []


async def test_a_program_publishes_its_own_plan(network: dict[str, Any]) -> None:  # noqa: F811
    jail, peer, ids = network["jail"], network["peer"], network["ids"]
    own = {
        "resourceType": "PlanDefinition",
        "url": "https://peer.example.org/fhir/PlanDefinition/our-follow-up",
        "status": "active",
        "title": "Call within 12 hours, visit within 3 days",
        "useContext": [
            {
                "code": {
                    "system": "http://terminology.hl7.org/CodeSystem/usage-context-type",
                    "code": "program",
                },
                "valueReference": {"reference": ids["peer"]},
            }
        ],
        "action": [
            {
                "id": "call",
                "title": "Call within 12 hours",
                "timingDuration": {
                    "value": 12,
                    "unit": "h",
                    "system": "http://unitsofmeasure.org",
                    "code": "h",
                },
            },
            {
                "id": "visit",
                "title": "Visit within 3 days",
                "timingDuration": {
                    "value": 3,
                    "unit": "d",
                    "system": "http://unitsofmeasure.org",
                    "code": "d",
                },
            },
        ],
    }
    r = await peer.post("/fhir/PlanDefinition", json=own, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    # Its own: other organizations do not see it.
    assert (await jail.get(f"/fhir/PlanDefinition/{r.json()['id']}")).status_code == 404
    ref = await accepted(network, "peer", services=["peer-support"])
    released = at(-1)
    await release(jail, released)
    tasks = await follow_ups(peer, ref)
    assert [t["description"] for t in tasks] == ["Call within 12 hours", "Visit within 3 days"]
    assert instant(tasks[0]["restriction"]["period"]["end"]) - instant(released) == timedelta(
        hours=12
    )


async def test_the_contact_log_completes_the_due_follow_up(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, peer = network["jail"], network["otp"], network["peer"]
    ref = await accepted(network, facility=network["ids"]["jail"])
    await release(jail, at(-30))  # released 30 hours ago: the 24-hour contact is overdue
    person = f"/v1/people/{ref['patient_id']}/contacts"
    missed = {"at": at(-1), "medium": "phone", "reached": False, "next_step": "Try the sister"}
    r = await otp.post(person, json=missed, headers={"Idempotency-Key": "contact-1"})
    assert r.status_code == 201, r.text
    assert r.json()["reached"] is False and r.json()["follow_up"] is None
    again = await otp.post(person, json=missed, headers={"Idempotency-Key": "contact-1"})
    assert again.status_code == 201 and again.json()["contact_id"] == r.json()["contact_id"]
    worklist = (await otp.get("/v1/follow-ups")).json()
    assert [i["bucket"] for i in worklist] == [
        "overdue",
        "upcoming",
        "upcoming",
        "upcoming",
        "upcoming",
    ]
    first = worklist[0]
    assert first["person"] == {"family_name": "Rivera", "given_names": ["Dana"]}
    assert first["last_contact"]["reached"] is False and first["referral_id"] == ref["referral_id"]
    assert first["facility"] == network["ids"]["jail"] and first["facility_name"] == "jail"
    reached = {
        "at": at(0),
        "medium": "in-person",
        "reached": True,
        "topics": ["naloxone-in-hand", "moud-adherence"],
        "next_step": "Ride to the OTP on Thursday",
    }
    r = await otp.post(person, json=reached)
    assert r.status_code == 201, r.text
    contact = r.json()
    assert contact["follow_up"] == first["task_id"]
    assert contact["topics"] == ["naloxone-in-hand", "moud-adherence"]
    task = (await otp.get(f"/fhir/Task/{first['task_id']}")).json()
    assert task["status"] == "completed"
    assert {"reference": f"Communication/{contact['contact_id']}"} in [
        o.get("valueReference") for o in task["output"]
    ]
    comm = (await otp.get(f"/fhir/Communication/{contact['contact_id']}")).json()
    assert comm["status"] == "completed" and comm["medium"][0]["coding"][0]["code"] == "in-person"
    # The next due contact heads the worklist; the log is newest first.
    worklist = (await otp.get("/v1/follow-ups")).json()
    assert len(worklist) == 4 and worklist[0]["last_contact"]["reached"] is True
    assert worklist[0]["description"] == "Contact within 72 hours of release"
    log = (await otp.get(person)).json()
    assert [c["reached"] for c in log] == [True, False]
    assert log[1]["next_step"] == "Try the sister"
    # Paged by position, and filtered.
    page = await otp.get("/v1/follow-ups", params={"limit": 3})
    assert len(page.json()) == 3 and 'rel="next"' in page.headers["link"]
    following = page.headers["link"].split(";")[0].strip("<>")
    rest = (await otp.get(following.removeprefix("http://testserver"))).json()
    assert [i["task_id"] for i in page.json() + rest] == [i["task_id"] for i in worklist]
    assert (await otp.get("/v1/follow-ups", params={"bucket": "overdue"})).json() == []
    assert (await otp.get("/v1/follow-ups", params={"bucket": "late"})).status_code == 422
    # No other organization sees the log, nor the worklist's Tasks.
    assert (await jail.get(person)).json() == []
    assert (await jail.get(f"/fhir/Communication/{contact['contact_id']}")).status_code == 404
    assert (await peer.get(person)).status_code == 404  # not a party: not even the person
    assert (await jail.get("/v1/follow-ups")).json() == []
    r = await otp.post(person, json={**reached, "medium": "pigeon"})
    assert r.status_code == 422
