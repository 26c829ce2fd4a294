"""Custody stays over /v1 (booking, expected release, transfer, release, corrections) stored
as Encounters, and the release driving the referrals of the stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.api.routes.v1_views import ReferralView
from tests.api.test_assessments import assessment, dast
from tests.api.test_referrals import network, put_task, referral  # noqa: F401
from tests.builders import FHIR_JSON, HL7_V2, adt_message, fhir_consent

pytestmark = pytest.mark.usefixtures("instruments")

STATUS_CS = "https://handoff.dev/fhir/CodeSystem/warm-handoff-status"
CUSTODY_CS = "https://handoff.dev/fhir/CodeSystem/custody-encounter"


def at(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0).isoformat()


def booking(number: str = "B-1", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "booking_number": number,
        "person": {
            "person_id": "P-1",
            "family_name": "Rivera",
            "given_names": ["Dana"],
            "birth_date": "1988-03-14",
            "sex": "female",
        },
        "facility": "County Jail, Main",
        "booked_at": at(-72),
        "expected_release_at": at(96),
    }
    body.update(over)
    return body


def milestone(code: str) -> dict[str, Any]:
    return {"coding": [{"system": STATUS_CS, "code": code}]}


async def refer_from_stay(jail: httpx.AsyncClient, receiver: str, **over: Any) -> dict[str, Any]:
    body = referral(receiver, **over)
    body.pop("release")
    r = await jail.post("/v1/referrals", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_booking_is_an_encounter_searchable_and_idempotent(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    first = booking()
    r = await jail.post("/v1/bookings", json=first, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 201, r.text
    stay = r.json()
    assert stay["status"] == "in-custody" and stay["booking_number"] == "B-1"
    assert stay["facility"] == "County Jail, Main" and stay["release"] is None
    # The same key answers as the first time; the same booking number is the same stay.
    again = await jail.post("/v1/bookings", json=first, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 201 and again.json()["stay_id"] == stay["stay_id"]
    again = await jail.post("/v1/bookings", json=booking(facility="Elsewhere"))
    assert again.status_code == 200 and again.json()["facility"] == "County Jail, Main"
    enc = (await jail.get(f"/fhir/Encounter/{stay['stay_id']}")).json()
    assert enc["status"] == "in-progress" and enc["class"]["code"] == "custody-stay"
    assert enc["serviceProvider"]["reference"] == ids["jail"]
    assert enc["subject"]["reference"] == f"Patient/{stay['patient_id']}"
    found = (
        await jail.get(
            "/fhir/Encounter",
            params={"class": f"{CUSTODY_CS}|custody-stay", "patient": stay["patient_id"]},
        )
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [stay["stay_id"]]
    # Another organization with no referral for the person sees nothing of it.
    assert (await otp.get(f"/fhir/Encounter/{stay['stay_id']}")).status_code == 404
    assert (await otp.get("/v1/bookings/B-1")).status_code == 404
    assert (await otp.get("/fhir/Encounter")).json().get("entry") is None


async def test_booking_validation(network: dict[str, Any]) -> None:  # noqa: F811
    jail = network["jail"]
    r = await jail.post("/v1/bookings", json=booking(booked_at=at(48)))
    assert r.status_code == 422 and "booked_at is in the future" in r.text
    r = await jail.post("/v1/bookings", json=booking(expected_release_at=at(-100)))
    assert r.status_code == 422 and "before booked_at" in r.text
    body = booking()
    body["person"]["booking_number"] = "B-2"
    r = await jail.post("/v1/bookings", json=body)
    assert r.status_code == 422 and "B-2" in r.text
    r = await jail.post("/v1/bookings", json=booking(facility="Location/nowhere"))
    assert r.status_code == 422 and "Location/nowhere is not known here" in r.text
    assert (await jail.get("/v1/bookings/NOPE")).status_code == 404
    r = await jail.post(
        "/v1/bookings/NOPE/release",
        json={"released_at": at(-1), "planned": True, "release_type": "bail"},
    )
    assert r.status_code == 404 and "book it first" in r.text


async def test_expected_release_change_and_transfer(network: dict[str, Any]) -> None:  # noqa: F811
    jail, ids = network["jail"], network["ids"]
    await jail.post("/v1/bookings", json=booking())
    ref = await refer_from_stay(jail, ids["otp"])
    assert ref["custody_stay"].startswith("Encounter/")
    before = ref["release"]["expected_at"]
    later = at(120)
    r = await jail.patch("/v1/bookings/B-1", json={"expected_release_at": later})
    assert r.status_code == 200, r.text
    assert r.json()["expected_release_at"] == later
    assert r.json()["referrals"] == [ref["referral_id"]]
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    assert view["release"]["expected_at"] == later != before
    task = (await jail.get(f"/fhir/Task/{ref['task_id']}")).json()
    assert task["restriction"]["period"]["start"] == later
    # A transfer closes the current location and opens the next.
    r = await jail.post(
        "/v1/bookings/B-1/transfers", json={"to_facility": "North Annex", "at": at(-1)}
    )
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["facility"] == "North Annex"
    assert [(x["facility"], x["status"]) for x in moved["locations"]] == [
        ("County Jail, Main", "completed"),
        ("North Annex", "active"),
    ]
    r = await jail.post("/v1/bookings/B-1/transfers", json={"to_facility": "South", "at": at(-500)})
    assert r.status_code == 422 and "before the booking" in r.text
    # Corrections: the booking time, and the facility without a transfer.
    r = await jail.patch("/v1/bookings/B-1", json={"booked_at": at(-80), "facility": "Annex N"})
    assert r.status_code == 200
    assert r.json()["facility"] == "Annex N" and len(r.json()["locations"]) == 2
    assert (await jail.patch("/v1/bookings/B-1", json={})).status_code == 422


async def test_planned_release_drives_the_referral(network: dict[str, Any]) -> None:  # noqa: F811
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    await jail.post("/v1/bookings", json=booking(expected_release_at=at(2)))
    ref = await refer_from_stay(jail, ids["otp"])
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    r = await put_task(otp, task, status="accepted", businessStatus=milestone("accepted"))
    assert r.status_code == 200, r.text
    task = r.json()
    # Before the release: a post-release milestone is refused, saying why.
    r = await put_task(otp, task, status="in-progress", businessStatus=milestone("met-at-release"))
    assert r.status_code == 422
    message = r.json()["issue"][0]["diagnostics"]
    assert "after the person's release" in message and "no release yet" in message
    # The provider sees the custody stay of the person it was referred (its release matters).
    stay_id = ref["custody_stay"].removeprefix("Encounter/")
    assert (await otp.get(f"/fhir/Encounter/{stay_id}")).status_code == 200
    released_at = at(-0.1)
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={
            "released_at": released_at,
            "planned": True,
            "release_type": "end-of-sentence",
            "destination": "Home",
        },
    )
    assert r.status_code == 200, r.text
    stay = r.json()
    assert stay["status"] == "released" and stay["escalations"] == []
    assert stay["release"] == {
        "released_at": released_at,
        "planned": True,
        "release_type": "end-of-sentence",
        "destination": "Home",
    }
    enc = (await jail.get(f"/fhir/Encounter/{stay_id}")).json()
    assert enc["status"] == "finished" and enc["period"]["end"] == released_at
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == (
        "end-of-sentence"
    )
    # The release is on the referral's timeline, and the referral leaves the worklist.
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    assert view["release"]["released_at"] == released_at and view["release"]["planned"]
    events = view["timeline"]
    assert sorted(e["event"] for e in events) == ["released", "task", "task"]
    released = next(e for e in events if e["event"] == "released")
    assert released["at"] == released_at and released["by"] == ref["custody_stay"]
    # In time order: the release happened (6 minutes ago) before the acceptance was recorded.
    assert [e["event"] for e in events] == ["released", "task", "task"]
    ReferralView.model_validate(view)  # the documented answer, field for field
    worklist = (await jail.get("/v1/referrals")).json()
    assert ref["referral_id"] not in [v["referral_id"] for v in worklist]
    # After it, the milestone is accepted.
    r = await put_task(otp, task, status="in-progress", businessStatus=milestone("met-at-release"))
    assert r.status_code == 200, r.text
    # Resending the same release changes nothing.
    versions = len((await jail.get(f"/fhir/Encounter/{stay_id}/_history")).json()["entry"])
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={
            "released_at": released_at,
            "planned": True,
            "release_type": "end-of-sentence",
            "destination": "Home",
        },
    )
    assert r.status_code == 200
    assert len((await jail.get(f"/fhir/Encounter/{stay_id}/_history")).json()["entry"]) == versions


async def test_unplanned_release_escalates(network: dict[str, Any]) -> None:  # noqa: F811
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    await jail.post("/v1/bookings", json=booking(expected_release_at=at(24 * 10)))
    ref = await refer_from_stay(jail, ids["otp"])
    esc = (await jail.get("/v1/referrals/escalations", params={"within_hours": 72})).json()
    assert ref["referral_id"] not in [v["referral_id"] for v in esc]  # release 10 days away
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={"released_at": at(-0.5), "planned": False, "release_type": "court-order"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["escalations"] == [
        {
            "referral_id": ref["referral_id"],
            "task_id": ref["task_id"],
            "reason": "released without notice before the referral was accepted",
        }
    ]
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    assert task["priority"] == "stat" and task["status"] == "requested"
    assert task["businessStatus"]["coding"][0]["code"] == "released-unplanned"
    esc = (await jail.get("/v1/referrals/escalations", params={"within_hours": 72})).json()
    assert ref["referral_id"] in [v["referral_id"] for v in esc]
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    assert view["release"]["planned"] is False and view["priority"] == "stat"
    # Accepted, it is no longer an escalation.
    r = await put_task(otp, task, status="accepted", businessStatus=milestone("accepted"))
    assert r.status_code == 200, r.text
    esc = (await jail.get("/v1/referrals/escalations", params={"within_hours": 72})).json()
    assert ref["referral_id"] not in [v["referral_id"] for v in esc]


async def test_release_corrections(network: dict[str, Any]) -> None:  # noqa: F811
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    await jail.post("/v1/bookings", json=booking())
    ref = await refer_from_stay(jail, ids["otp"])
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={"released_at": at(-100), "planned": True, "release_type": "bail"},
    )
    assert r.status_code == 422 and "before the booking" in r.text
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={"released_at": at(5), "planned": True, "release_type": "bail"},
    )
    assert r.status_code == 422 and "released_at is in the future" in r.text
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={"released_at": at(-1), "planned": True, "release_type": "bail"},
    )
    assert r.status_code == 200
    # A corrected release replaces the first.
    r = await jail.post(
        "/v1/bookings/B-1/release",
        json={"released_at": at(-2), "planned": True, "release_type": "court-order"},
    )
    assert r.status_code == 200 and r.json()["release"]["release_type"] == "court-order"
    # A cancelled booking needs its release cancelled first.
    r = await jail.post("/v1/bookings/B-1/cancel")
    assert r.status_code == 422 and "cancel the release first" in r.text
    r = await jail.post("/v1/bookings/B-1/release/cancel")
    assert r.status_code == 200 and r.json()["status"] == "in-custody"
    assert r.json()["release"] is None and r.json()["locations"][-1]["to"] is None
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    assert view["release"]["released_at"] is None
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    r = await put_task(otp, task, status="accepted", businessStatus=milestone("no-show"))
    assert r.status_code == 422  # not released any more
    r = await jail.post("/v1/bookings/B-1/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await jail.post("/v1/bookings/B-1/transfers", json={"to_facility": "X", "at": at(-1)})
    assert r.status_code == 422 and "cancelled" in r.text


async def test_referrals_at_every_intercept(network: dict[str, Any]) -> None:  # noqa: F811
    jail, ids = network["jail"], network["ids"]
    for n, (intercept, program) in enumerate(
        [(0, "crisis-response"), (1, "post-overdose-outreach"), (5, "probation")]
    ):
        body = referral(ids["otp"], intercept=intercept, program_type=program)
        body["referral_id"] = f"COMMUNITY-{n}"
        body.pop("release")
        body["person"].pop("booking_number")
        r = await jail.post("/v1/referrals", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["release"]["expected_at"] is None and r.json()["intercept"] == intercept
        task = (await jail.get(f"/fhir/Task/{r.json()['task_id']}")).json()
        assert "restriction" not in task
    body = referral(ids["otp"], referral_id="IN-CUSTODY")
    body.pop("release")
    r = await jail.post("/v1/referrals", json=body)
    assert r.status_code == 422 and "intercept 4" in r.text and "release" in r.text
    program = (await jail.get("/fhir/CodeSystem/referring-program")).json()
    probation = next(c for c in program["concept"] if c["code"] == "probation")
    assert probation["property"] == [{"code": "intercept", "valueCode": "5"}]


async def test_referral_after_release_within_the_window(network: dict[str, Any]) -> None:  # noqa: F811
    jail, ids = network["jail"], network["ids"]
    await jail.post("/v1/bookings", json=booking("B-1", booked_at=at(-24 * 10)))
    await jail.post(
        "/v1/bookings/B-1/release",
        json={"released_at": at(-24), "planned": False, "release_type": "bail"},
    )
    ref = await refer_from_stay(jail, ids["otp"], intercept=4)
    assert ref["release"]["released_at"] and ref["release"]["planned"] is False
    # Released long ago: refused, naming the window.
    await jail.post(
        "/v1/bookings",
        json=booking("B-OLD", booked_at=at(-24 * 60), expected_release_at=None),
    )
    await jail.post(
        "/v1/bookings/B-OLD/release",
        json={"released_at": at(-24 * 40), "planned": True, "release_type": "time-served"},
    )
    body = referral(ids["otp"], referral_id="LATE")
    body.pop("release")
    body["person"]["booking_number"] = "B-OLD"
    r = await jail.post("/v1/referrals", json=body)
    assert r.status_code == 422 and "more than 30 days ago" in r.text


async def test_encounter_via_fhir_is_validated(network: dict[str, Any]) -> None:  # noqa: F811
    jail = network["jail"]
    r = await jail.post(
        "/fhir/Encounter",
        json={"resourceType": "Encounter", "status": "nonsense", "class": {"code": "x"}},
        headers=FHIR_JSON,
    )
    assert r.status_code in (400, 422)


def hl7_time(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y%m%d%H%M%S+0000")


async def send(c: httpx.AsyncClient, message: str) -> tuple[int, dict[str, str]]:
    r = await c.post("/v1/hl7v2/adt", content=message.encode(), headers=HL7_V2)
    assert r.headers["content-type"].startswith("application/hl7-v2"), r.text
    segments = {s.split("|", 1)[0]: s for s in r.text.split("\r") if s}
    return r.status_code, segments


async def test_adt_booking_update_transfer_release(network: dict[str, Any]) -> None:  # noqa: F811
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    admit = adt_message(
        "A01", control_id="MSG1", when=hl7_time(-48), expected_release=hl7_time(24 * 10)
    )
    status, ack = await send(jail, admit)
    assert status == 200 and ack["MSA"] == "MSA|AA|MSG1", ack
    assert ack["MSH"].split("|")[8] == "ACK^A01^ACK"
    stay = (await jail.get("/v1/bookings/B-77")).json()
    assert stay["status"] == "in-custody" and stay["facility"] == "County Jail"
    assert stay["expected_release_at"]
    # The same control id: the same ACK, nothing written again.
    first = (await jail.post("/v1/hl7v2/adt", content=admit.encode(), headers=HL7_V2)).text
    history = f"/fhir/Encounter/{stay['stay_id']}/_history"
    versions = len((await jail.get(history)).json()["entry"])
    again = await jail.post("/v1/hl7v2/adt", content=admit.encode(), headers=HL7_V2)
    assert again.status_code == 200 and again.text == first
    assert len((await jail.get(history)).json()["entry"]) == versions
    status, ack = await send(jail, admit.replace("Rivera", "Rivers"))
    assert status == 422 and ack["MSA"] == "MSA|AE|MSG1" and "|205^" in ack["ERR"]
    # A referral of the stay, then an update of the expected release it follows.
    ref = await refer_from_stay(
        jail,
        ids["otp"],
        person={**referral("x")["person"], "person_id": "P-100", "booking_number": "B-77"},
    )
    update = adt_message(
        "A08", control_id="MSG2", when=hl7_time(-48), expected_release=hl7_time(24 * 12)
    )
    status, ack = await send(jail, update)
    assert status == 200, ack
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    assert (
        view["release"]["expected_at"]
        == (await jail.get("/v1/bookings/B-77")).json()["expected_release_at"]
    )
    # An update that says nothing of the release (no PV2-9) keeps the expected release.
    expected = (await jail.get("/v1/bookings/B-77")).json()["expected_release_at"]
    status, ack = await send(jail, adt_message("A08", control_id="MSG2b", when=hl7_time(-47)))
    assert status == 200, ack
    assert (await jail.get("/v1/bookings/B-77")).json()["expected_release_at"] == expected
    transfer = adt_message("A02", control_id="MSG3", when=hl7_time(-1), facility="North Annex")
    status, ack = await send(jail, transfer)
    assert status == 200, ack
    assert (await jail.get("/v1/bookings/B-77")).json()["facility"] == "North Annex"
    # Discharged ten days early, before the referral was accepted: unplanned, escalated.
    discharge = adt_message(
        "A03",
        control_id="MSG4",
        when=hl7_time(-0.5),
        released_at=hl7_time(-0.5),
        disposition="court-order",
    )
    status, ack = await send(jail, discharge)
    assert status == 200 and ack["MSA"] == "MSA|AA|MSG4", ack
    stay = (await jail.get("/v1/bookings/B-77")).json()
    assert stay["status"] == "released"
    assert stay["release"]["planned"] is False
    assert stay["release"]["release_type"] == "court-order"
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    assert task["priority"] == "stat"
    view = (await jail.get(f"/v1/referrals/{ref['referral_id']}")).json()
    assert "released" in [e["event"] for e in view["timeline"]]
    # Cancel the discharge (A13), then the admission (A11).
    status, ack = await send(jail, adt_message("A13", control_id="MSG5", when=hl7_time(-0.2)))
    assert status == 200, ack
    assert (await jail.get("/v1/bookings/B-77")).json()["status"] == "in-custody"
    status, ack = await send(jail, adt_message("A11", control_id="MSG6", when=hl7_time(-0.1)))
    assert status == 200, ack
    assert (await jail.get("/v1/bookings/B-77")).json()["status"] == "cancelled"


async def test_adt_refusals(network: dict[str, Any]) -> None:  # noqa: F811
    jail = network["jail"]
    status, ack = await send(jail, "this is not HL7")
    assert status == 400 and ack["MSA"].startswith("MSA|AR") and "Not an HL7 v2" in ack["ERR"]
    status, ack = await send(jail, adt_message("A05", control_id="M1", when=hl7_time(-1)))
    assert status == 400 and ack["MSA"] == "MSA|AR|M1" and "|201^" in ack["ERR"]
    no_booking = adt_message("A01", control_id="M2", when=hl7_time(-1), booking="")
    status, ack = await send(jail, no_booking)
    assert status == 422 and ack["MSA"] == "MSA|AE|M2"
    assert "|101^" in ack["ERR"] and "PV1-19" in ack["ERR"]
    unknown = adt_message("A08", control_id="M3", when=hl7_time(-1), booking="B-NONE")
    status, ack = await send(jail, unknown)
    assert status == 422 and "|204^" in ack["ERR"] and "B-NONE" in ack["ERR"]
    release = adt_message("A03", control_id="M4", when=hl7_time(-1), booking="B-NONE")
    status, ack = await send(jail, release)
    assert status == 422 and "B-NONE" in ack["ERR"]
    # Nothing was written by the refused messages.
    assert (await jail.get("/fhir/Encounter")).json().get("entry") is None
    # LF-separated messages are taken too; a JSON body is not an HL7 message.
    lf = adt_message("A01", control_id="M5", when=hl7_time(-1)).replace("\r", "\n")
    status, ack = await send(jail, lf)
    assert status == 200, ack
    r = await jail.post("/v1/hl7v2/adt", json={"x": 1})
    assert r.status_code == 415 and "application/hl7-v2" in r.text


async def test_screening_by_the_health_unit_follows_the_referral(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, health, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    r = await client.put(
        "/v1/admin/identity-domains/county", json={"organizations": [ids["jail"], ids["peer"]]}
    )
    assert r.status_code == 200, r.text
    stay = (await jail.post("/v1/bookings", json=booking())).json()
    screening = assessment("dast-10", dast({1, 2, 3}))
    screening["person"] = {**booking()["person"], "booking_number": "B-1"}
    screening["administered_at"] = at(-1)
    r = await health.post("/v1/assessments", json=screening)
    assert r.status_code == 201, r.text
    assert r.json()["patient_id"] == stay["patient_id"]  # one person across the domain
    qr = r.json()["questionnaire_response"]
    ref = await refer_from_stay(jail, ids["otp"])
    assert ref["patient_id"] == stay["patient_id"]
    sr = (await jail.get(f"/fhir/ServiceRequest/{ref['referral_id']}")).json()
    assert {"reference": qr} in sr["supportingInfo"]
    # The receiver reads the screening only under the health unit's consent naming it.
    assert (await otp.get(f"/fhir/{qr}")).status_code == 404
    await fhir_consent(
        health, f"Patient/{stay['patient_id']}", custodian=ids["peer"], recipients=[ids["otp"]]
    )
    assert (await otp.get(f"/fhir/{qr}")).status_code == 200
