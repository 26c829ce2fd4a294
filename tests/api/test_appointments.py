"""Appointments booked for a referral (FHIR Appointment and /v1/referrals/{id}/appointments):
the milestones and clinical times they give the referral, the release they wait for, and who
sees and changes them (42 CFR Part 2: the receiving organization's record)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from service.api.routes.v1_views import AppointmentView, ReferralView
from tests.api.test_custody import at, booking, milestone, refer_from_stay
from tests.api.test_referrals import network, put_task  # noqa: F401
from tests.builders import FHIR_JSON, fhir_consent

pytestmark = pytest.mark.usefixtures("instruments")

MILESTONE_AT = "https://handoff.dev/fhir/StructureDefinition/milestone-occurred-at"


def code_of(task: dict[str, Any]) -> str:
    return str(task["businessStatus"]["coding"][0]["code"])


async def accepted_referral(
    client: httpx.AsyncClient, net: dict[str, Any], *, release_in: float = 2
) -> dict[str, Any]:
    """A custody stay, its referral to the OTP, accepted; and the OTP's site."""
    jail, otp, ids = net["jail"], net["otp"], net["ids"]
    r = await jail.post("/v1/bookings", json=booking(expected_release_at=at(release_in)))
    assert r.status_code in (200, 201), r.text
    ref = await refer_from_stay(jail, ids["otp"])
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    r = await put_task(otp, task, status="accepted", businessStatus=milestone("accepted"))
    assert r.status_code == 200, r.text
    site = await client.post(
        "/fhir/Location",
        json={"resourceType": "Location", "name": "Harbor OTP, Main St", "status": "active"},
        headers=FHIR_JSON,
    )
    assert site.status_code == 201, site.text
    ref["location"] = f"Location/{site.json()['id']}"
    return ref


async def release(jail: httpx.AsyncClient, hours: float = -3) -> None:
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={"released_at": at(hours), "planned": True, "release_type": "end-of-sentence"},
    )
    assert r.status_code == 200, r.text


async def task_of(c: httpx.AsyncClient, ref: dict[str, Any]) -> dict[str, Any]:
    task: dict[str, Any] = (await c.get(f"/fhir/Task/{ref['task_id']}")).json()
    return task


async def test_book_reschedule_attend_over_v1(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp = network["jail"], network["otp"]
    ref = await accepted_referral(client, network)
    url = f"/v1/referrals/{ref['referral_id']}/appointments"
    first = {"start": at(48), "location": ref["location"], "description": "Intake"}
    r = await otp.post(url, json=first, headers={"Idempotency-Key": "book-1"})
    assert r.status_code == 201, r.text
    booked = AppointmentView.model_validate(r.json()).model_dump()
    assert booked["status"] == "booked" and booked["location"] == ref["location"]
    assert booked["location_name"] == "Harbor OTP, Main St" and not booked["details_withheld"]
    assert booked["referral_id"] == ref["referral_id"]
    # A retry with the key is the same booking, not a second one.
    again = await otp.post(url, json=first, headers={"Idempotency-Key": "book-1"})
    assert again.status_code == 201, again.text
    assert again.json()["appointment_id"] == booked["appointment_id"]
    assert len((await otp.get(url)).json()) == 1
    # The FHIR record: basedOn the referral, labelled as Part 2 like the referral.
    appt = (await otp.get(f"/fhir/Appointment/{booked['appointment_id']}")).json()
    assert appt["basedOn"] == [{"reference": f"ServiceRequest/{ref['referral_id']}"}]
    assert "42CFRPart2" in {s["code"] for s in appt["meta"]["security"]}
    assert code_of(await task_of(otp, ref)) == "intake-scheduled"
    # Rescheduled: still scheduled, at the new time.
    one = f"{url}/{booked['appointment_id']}"
    later = at(72)
    r = await otp.patch(one, json={"start": later, "end": at(73)})
    assert r.status_code == 200, r.text
    assert r.json()["start"] == later and r.json()["location"] == ref["location"]
    assert code_of(await task_of(otp, ref)) == "intake-scheduled"
    # Attended before the release: refused, saying why.
    r = await otp.post(f"{one}/attended")
    assert r.status_code == 422, r.text
    message = r.json()["issue"][0]["diagnostics"]
    assert "before the person's release" in message and "records no release yet" in message
    assert code_of(await task_of(otp, ref)) == "intake-scheduled"
    # Released three hours ago; an appointment before that cannot have been attended.
    await release(jail, -3)
    r = await otp.patch(one, json={"start": at(-4)})
    assert r.status_code == 200, r.text
    r = await otp.post(f"{one}/attended")
    assert r.status_code == 422
    assert "before the person's recorded release" in r.json()["issue"][0]["diagnostics"]
    # Held an hour ago: attended, with its start as when the milestone happened.
    start = at(-1)
    assert (await otp.patch(one, json={"start": start})).status_code == 200
    r = await otp.post(f"{one}/attended")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "fulfilled"
    assert (await otp.post(f"{one}/attended")).json()["status"] == "fulfilled"  # a retry
    task = await task_of(otp, ref)
    assert code_of(task) == "first-appointment-attended" and task["status"] == "in-progress"
    assert task["businessStatus"]["extension"] == [{"url": MILESTONE_AT, "valueDateTime": start}]
    assert {"reference": f"Appointment/{booked['appointment_id']}"} in [
        o.get("valueReference") for o in task["output"]
    ]
    # The provider's view of the referral: the clinical time on the timeline.
    view = (await otp.get(f"/v1/referrals/{ref['referral_id']}")).json()
    attended = [
        e
        for e in view["timeline"]
        if (e["business_status"] or {}).get("code") == "first-appointment-attended"
    ]
    assert attended and attended[0]["occurred_at"] == start
    ReferralView.model_validate(view)
    # A fulfilled appointment is not rescheduled, nor cancelled.
    assert (await otp.patch(one, json={"start": at(5)})).status_code == 422
    assert (await otp.post(f"{one}/cancel")).status_code == 422


async def test_no_show_reschedule_attend_over_fhir(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp = network["jail"], network["otp"]
    ref = await accepted_referral(client, network)
    patient = f"Patient/{ref['patient_id']}"
    body = {
        "resourceType": "Appointment",
        "status": "booked",
        "basedOn": [{"reference": f"ServiceRequest/{ref['referral_id']}"}],
        "start": at(-1),
        "end": at(0),
        "participant": [
            {"actor": {"reference": patient}, "status": "accepted"},
            {"actor": {"reference": ref["location"]}, "status": "accepted"},
        ],
    }
    r = await otp.post("/fhir/Appointment", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    appt = r.json()
    assert code_of(await task_of(otp, ref)) == "intake-scheduled"
    # Searchable by the R4 parameters.
    for params in (
        {"patient": patient},
        {"based-on": f"ServiceRequest/{ref['referral_id']}"},
        {"status": "booked"},
        {"actor": ref["location"]},
        {"location": ref["location"]},
        {"date": f"ge{at(-2)}"},
    ):
        found = (await otp.get("/fhir/Appointment", params=params)).json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [appt["id"]], params
    assert "entry" not in (await otp.get("/fhir/Appointment", params={"date": f"ge{at(1)}"})).json()

    async def put(changes: dict[str, Any]) -> httpx.Response:
        nonlocal appt
        new = copy.deepcopy(appt)
        new.update(changes)
        r = await otp.put(f"/fhir/Appointment/{appt['id']}", json=new, headers=FHIR_JSON)
        if r.status_code == 200:
            appt = r.json()
        return r

    # Missed before the release: refused.
    r = await put({"status": "noshow"})
    assert r.status_code == 422 and "records no release yet" in r.text
    await release(jail, -3)
    r = await put({"status": "noshow"})
    assert r.status_code == 200, r.text
    task = await task_of(otp, ref)
    assert code_of(task) == "no-show" and task["priority"] == "stat"  # escalated
    # The jail's timeline shows the escalation (the Task changed), the milestone withheld.
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    assert view["priority"] == "urgent"  # the referral's own; the Task's is escalated
    # Rebooked for tomorrow, then held after all (rescheduled to an hour ago) and attended.
    r = await put({"status": "booked", "start": at(24), "end": at(25)})
    assert r.status_code == 200, r.text
    assert code_of(await task_of(otp, ref)) == "intake-scheduled"
    held = at(-2)
    r = await put({"status": "fulfilled", "start": held, "end": at(-1)})
    assert r.status_code == 200, r.text
    task = await task_of(otp, ref)
    assert code_of(task) == "first-appointment-attended"
    assert task["businessStatus"]["extension"][0]["valueDateTime"] == held
    # Cancelling a second, still booked appointment leaves the attended milestone alone.
    second = {**body, "start": at(30), "end": at(31)}
    r = await otp.post("/fhir/Appointment", json=second, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    assert code_of(await task_of(otp, ref)) == "first-appointment-attended"


async def test_cancel_returns_the_milestone(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    otp = network["otp"]
    ref = await accepted_referral(client, network)
    url = f"/v1/referrals/{ref['referral_id']}/appointments"
    booked = (await otp.post(url, json={"start": at(48)})).json()
    r = await otp.post(f"{url}/{booked['appointment_id']}/cancel", json={"reason": "Moved away"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["cancellation_reason"] == "Moved away"
    assert code_of(await task_of(otp, ref)) == "accepted"
    # Unknown moves and bodies are refused.
    assert (await otp.post(f"{url}/{booked['appointment_id']}/vanished")).status_code == 422
    r = await otp.post(url, json={"start": at(48), "end": at(47)})
    assert r.status_code == 422 and "end must be after start" in r.text
    r = await otp.post(url, json={"start": at(48), "location": "Organization/x"})
    assert r.status_code == 422
    r = await otp.post(url, json={"start": "tomorrow"})
    assert r.status_code == 422


async def test_the_jail_sees_it_redacted_without_consent_and_whole_with_it(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    ref = await accepted_referral(client, network)
    start = at(48)
    booked = (
        await otp.post(
            f"/v1/referrals/{ref['referral_id']}/appointments",
            json={"start": start, "location": ref["location"]},
        )
    ).json()
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    ReferralView.model_validate(view)
    assert view["appointments"] == [
        {
            "appointment_id": booked["appointment_id"],
            "referral_id": ref["referral_id"],
            "status": "booked",
            "start": None,
            "end": None,
            "location": None,
            "location_name": None,
            "practitioner": None,
            "description": None,
            "cancellation_reason": None,
            "details_withheld": True,
        }
    ]
    fhir = (await jail.get(f"/fhir/Appointment/{booked['appointment_id']}")).json()
    assert "start" not in fhir and "REDACTED" in {t["code"] for t in fhir["meta"]["tag"]}
    assert [p["actor"]["reference"] for p in fhir["participant"]] == [
        f"Patient/{ref['patient_id']}"
    ]
    # A search cannot find it by what the jail is not shown.
    by_date = (await jail.get("/fhir/Appointment", params={"date": f"ge{at(1)}"})).json()
    assert "entry" not in by_date
    by_referral = (
        await jail.get(
            "/fhir/Appointment", params={"based-on": f"ServiceRequest/{ref['referral_id']}"}
        )
    ).json()
    assert [e["resource"]["id"] for e in by_referral["entry"]] == [booked["appointment_id"]]
    # The jail may not change it.
    r = await jail.post(
        f"/v1/referrals/{ref['referral_id']}/appointments/{booked['appointment_id']}/cancel"
    )
    assert r.status_code == 403, r.text
    # Under the program's consent naming the jail: date, time and place.
    await fhir_consent(
        otp, f"Patient/{ref['patient_id']}", custodian=ids["otp"], recipients=[ids["jail"]]
    )
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    shown = view["appointments"][0]
    assert shown["start"] == start and shown["location"] == ref["location"]
    assert shown["location_name"] == "Harbor OTP, Main St" and not shown["details_withheld"]
    by_date = (await jail.get("/fhir/Appointment", params={"date": f"ge{at(1)}"})).json()
    assert [e["resource"]["id"] for e in by_date["entry"]] == [booked["appointment_id"]]


async def test_who_may_book_and_see(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
    org_client: Any,
) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    jail_view_before = None
    r = await jail.post("/v1/bookings", json=booking(expected_release_at=at(2)))
    assert r.status_code == 201, r.text
    ref = await refer_from_stay(jail, ids["otp"])
    url = f"/v1/referrals/{ref['referral_id']}/appointments"
    # Not yet accepted: the receiving organization may not book yet.
    r = await otp.post(url, json={"start": at(48)})
    assert r.status_code == 403 and "accepted the referral" in r.text
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    assert (await put_task(otp, task, status="accepted")).status_code == 200
    # The referring organization does not book for the program.
    r = await jail.post(url, json={"start": at(48)})
    assert r.status_code == 403, r.text
    # Another organization does not even learn the referral exists.
    r = await peer.post(url, json={"start": at(48)})
    assert r.status_code == 404, r.text
    booked = (await otp.post(url, json={"start": at(48)})).json()
    one = f"/fhir/Appointment/{booked['appointment_id']}"
    assert (await peer.get(one)).status_code == 404
    assert "entry" not in (await peer.get("/fhir/Appointment")).json()
    assert (await peer.post(f"{url}/{booked['appointment_id']}/cancel")).status_code == 404
    appt = (await otp.get(one)).json()
    r = await peer.put(one, json={**appt, "status": "cancelled"}, headers=FHIR_JSON)
    assert r.status_code in (404, 409), r.text
    # Through FHIR, a create naming a referral the writer cannot see is refused alike.
    body = {k: v for k, v in appt.items() if k not in ("id", "meta")}
    r = await peer.post("/fhir/Appointment", json=body, headers=FHIR_JSON)
    assert r.status_code == 422 and "not known to this server" in r.text
    r = await jail.put(one, json={**appt, "status": "cancelled"}, headers=FHIR_JSON)
    assert r.status_code == 403, r.text
    # Without basedOn, or without the person, it is no referral's appointment.
    r = await otp.post("/fhir/Appointment", json={**body, "basedOn": []}, headers=FHIR_JSON)
    assert r.status_code in (400, 422) and "basedOn" in r.text
    r = await otp.post(
        "/fhir/Appointment",
        json={**body, "participant": [{"actor": {"reference": ref["custody_stay"] or ""}}]},
        headers=FHIR_JSON,
    )
    assert r.status_code in (400, 422)
    # Scopes: a token without Appointment access is refused, whatever the organization.
    narrow = await org_client(ids["otp"], "system/Task.cruds system/ServiceRequest.rs")
    r = await narrow.post(url, json={"start": at(50)})
    assert r.status_code == 403 and "Appointment" in r.text
    assert (await narrow.get(one)).status_code == 403
    reader = await org_client(ids["otp"], "system/*.rs")
    r = await reader.post(f"{url}/{booked['appointment_id']}/cancel")
    assert r.status_code == 403 and "Appointment" in r.text
    assert jail_view_before is None


async def test_a_no_show_is_an_escalation_for_the_jail_under_the_programs_consent(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    ref = await accepted_referral(client, network)
    await release(jail, -3)
    url = f"/v1/referrals/{ref['referral_id']}/appointments"
    r = await otp.post(url, json={"start": at(-2), "location": ref["location"]})
    assert r.status_code == 201, r.text
    one = f"{url}/{r.json()['appointment_id']}"

    async def escalated() -> list[str]:
        r = await jail.get("/v1/referrals/escalations", params={"within_hours": 72})
        assert r.status_code == 200, r.text
        return [v["referral_id"] for v in r.json()]

    assert ref["referral_id"] not in await escalated()  # accepted and booked: nothing to do
    assert (await otp.post(f"{one}/no-show")).status_code == 200
    # The missed appointment is the program's record: without its consent the jail's
    # escalations do not reveal it.
    assert ref["referral_id"] not in await escalated()
    await fhir_consent(
        otp, f"Patient/{ref['patient_id']}", custodian=ids["otp"], recipients=[ids["jail"]]
    )
    r = await jail.get("/v1/referrals/escalations", params={"within_hours": 72})
    [view] = [v for v in r.json() if v["referral_id"] == ref["referral_id"]]
    assert view["business_status"]["code"] == "no-show" and view["status"] == "accepted"
    ReferralView.model_validate(view)
    # Another organization never sees it; once attended after all, it is no longer listed.
    assert (await network["peer"].get("/v1/referrals/escalations")).json() == []
    assert (await otp.patch(one, json={"start": at(-1)})).status_code == 200
    assert (await otp.post(f"{one}/attended")).status_code == 200
    assert ref["referral_id"] not in await escalated()
