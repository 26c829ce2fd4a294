"""Program measures: facts kept by the write rule, SQL evaluation at the edges, who sees what,
small-cell suppression, /v1/measures JSON and CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.features.measures import facts
from service.storage.db import write_transaction
from tests.api.test_assessments import assessment, dast
from tests.api.test_custody import at, booking, milestone, refer_from_stay
from tests.api.test_referrals import network, put_task  # noqa: F401
from tests.builders import jms_person

pytestmark = pytest.mark.usefixtures("instruments")

OCCURRED = "https://handoff.dev/fhir/StructureDefinition/milestone-occurred-at"
NOV = {"from": "2026-11-01", "to": "2026-11-30"}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in report["measures"]}


def today_period() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"from": (today - timedelta(days=5)).isoformat(), "to": today.isoformat()}


async def test_a_release_counts_from_the_stored_resources(
    network: dict[str, Any],  # noqa: F811
    client: httpx.AsyncClient,
    engine: AsyncEngine,
) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    r = await jail.post("/v1/bookings", json=booking(expected_release_at=at(2)))
    assert r.status_code == 201, r.text
    screening = assessment("dast-10", dast({1, 2, 3, 4, 5, 6}))
    screening["person"] = jms_person("P-1", booking_number="B-1")
    screening["administered_at"] = at(-70)
    r = await jail.post("/v1/assessments", json=screening)
    assert r.status_code == 201, r.text
    ref = await refer_from_stay(jail, ids["otp"])  # buprenorphine + peer support: treatment
    task = (await otp.get(f"/fhir/Task/{ref['task_id']}")).json()
    # Accepted 40 hours ago (the milestone's clinical time), before the release 30 hours ago.
    accepted = {**milestone("accepted"), "extension": [{"url": OCCURRED, "valueDateTime": at(-40)}]}
    r = await put_task(otp, task, status="accepted", businessStatus=accepted)
    assert r.status_code == 200, r.text
    # A kit in hand and overdose education before the release.
    kit = {
        "setting": "at-release",
        "given_by": {"id": "S-1", "name": "Jordan Lee", "role": "nurse"},
        "given_at": at(-35),
        "product": "naloxone-4mg-nasal",
        "quantity": 2,
        "education_given": True,
        "intercept": 4,
        "person": jms_person("P-1", booking_number="B-1"),
    }
    r = await jail.post("/v1/naloxone", json=kit)
    assert r.status_code == 201, r.text
    release = {"released_at": at(-30), "planned": True, "release_type": "end-of-sentence"}
    r = await jail.post("/v1/bookings/B-1/release", json=release)
    assert r.status_code == 200, r.text
    contact = {"at": at(-20), "medium": "phone", "reached": True}
    r = await otp.post(f"/v1/people/{ref['patient_id']}/contacts", json=contact)
    assert r.status_code == 201, r.text

    # The first appointment, attended the day after the release: treatment within 14 days.
    url = f"/v1/referrals/{ref['referral_id']}/appointments"
    r = await otp.post(url, json={"start": at(-6), "description": "Intake"})
    assert r.status_code == 201, r.text
    r = await otp.post(f"{url}/{r.json()['appointment_id']}/attended")
    assert r.status_code == 200, r.text

    params = {**today_period(), "stratify": "release_type,sex,stay_length,facility"}
    report = (await client.get("/v1/measures", params=params)).json()
    assert report["scope"] == "all" and report["suppression"]["applied"] is False
    m = by_id(report)
    # A facility stratum names the facility (here the booking named it by name only).
    [where] = [s for s in m["screening-24h"]["strata"] if s["stratifier"] == "facility"]
    assert where["display"] == "County Jail, Main"
    assert all(s["display"] is None for s in m["screening-24h"]["strata"] if s is not where)
    assert (m["screening-24h"]["numerator"], m["screening-24h"]["denominator"]) == (1, 1)
    treatment = m["referral-accepted-before-release-treatment"]
    assert (treatment["numerator"], treatment["denominator"], treatment["rate"]) == (1, 1, 1.0)
    assert m["referral-accepted-before-release-harm-reduction"]["numerator"] == 0
    assert m["contact-within-24h"]["numerator"] == 1
    assert m["first-contact-median-hours"]["median_hours"] == pytest.approx(10, abs=0.1)
    assert m["treatment-initiation-14d"]["numerator"] == 1
    assert m["education-before-release"]["numerator"] == 1
    assert m["naloxone-in-hand-at-release"]["numerator"] == 1
    assert m["naloxone-kits-distributed"]["numerator"] == 2
    cascade = {s["step"]: s["count"] for s in report["cascade"]}
    assert cascade == {
        "released-at-risk": 1,
        "screened": 1,
        "referred": 1,
        "accepted-before-release": 1,
        "contacted-72h": 1,
        "treatment-14d": 1,
    }
    strata = {(s["stratifier"], s["value"]): s["denominator"] for s in treatment["strata"]}
    assert strata == {
        ("release_type", "planned"): 1,
        ("sex", "female"): 1,
        ("stay_length", "under-72h"): 1,  # booked 72 h ago, released 30 h ago
        ("facility", "County Jail, Main"): 1,
    }

    # A planned release corrected to unplanned: the facts follow the correction.
    r = await jail.post("/v1/bookings/B-1/release/cancel", json={})
    assert r.status_code == 200, r.text
    r = await jail.post("/v1/bookings/B-1/release", json={**release, "planned": False})
    assert r.status_code == 200, r.text
    report = (await client.get("/v1/measures", params=params)).json()
    strata = {
        (s["stratifier"], s["value"]): s["denominator"]
        for s in by_id(report)["education-before-release"]["strata"]
    }
    assert strata[("release_type", "unplanned")] == 1
    assert ("release_type", "planned") not in strata

    # The parties count it (suppressed: one release); an organization that is not one does not.
    for party in (jail, otp):
        seen = (await party.get("/v1/measures", params=today_period())).json()
        assert seen["scope"] == "organization" and seen["suppression"]["applied"] is True
        assert by_id(seen)["education-before-release"]["denominator"] == "<11"
    other = (await peer.get("/v1/measures", params=today_period())).json()
    assert other["organization"] == ids["peer"]
    assert by_id(other)["education-before-release"]["denominator"] == 0
    assert {s["count"] for s in other["cascade"]} == {0}

    # Booked again two hours ago: re-booked within 12 months.
    r = await jail.post(
        "/v1/bookings", json=booking("B-2", booked_at=at(-2), expected_release_at=at(48))
    )
    assert r.status_code == 201, r.text
    report = (await client.get("/v1/measures", params=params)).json()
    assert by_id(report)["rebooked-within-12-months"]["numerator"] == 1

    # A rebuild from the stored resources gives the same facts the write rule kept.
    before = (await client.get("/v1/measures", params=params)).json()
    counts = await facts.rebuild(engine, batch=1)
    assert counts["releases"] == 1 and counts["referrals"] == 1
    assert (await client.get("/v1/measures", params=params)).json() == before


async def _load(engine: AsyncEngine, releases: list[dict[str, Any]], **more: Any) -> None:
    async with write_transaction(engine) as conn:
        await facts.bulk_insert(conn, releases, more.get("referrals", []), more.get("events", []))


def rel(n: int, released: str, **over: Any) -> dict[str, Any]:
    released_at = utc(released)
    values: dict[str, Any] = {
        "release_id": f"R{n}",
        "patient": f"Patient/p{n}",
        "booked_at": released_at - timedelta(days=5),
        "released_at": released_at,
        "organization": "Organization/J",
        "facility": "Location/A",
        "sex": "male",
        "birth_date": date(1990, 1, 1),
    }
    values.update(over)
    return facts.release_row(**values)


async def test_measures_at_their_edges(
    engine: AsyncEngine, client: httpx.AsyncClient, org_client: Any
) -> None:
    released = utc("2026-11-10T12:00:00")
    await _load(
        engine,
        [
            # The last second of the period counts; the first second after it does not.
            rel(1, "2026-11-30T23:59:59", first_contact_at=utc("2026-12-03T23:59:59")),
            rel(2, "2026-12-01T00:00:00"),
            rel(3, "2026-10-31T23:59:59"),
            # Contact 72 h 1 min after release: within neither 24 h nor 72 h.
            rel(
                4, "2026-11-10T12:00:00", first_contact_at=released + timedelta(hours=72, minutes=1)
            ),
            # Treatment on day 14 counts, on day 15 does not.
            rel(
                5,
                "2026-11-10T12:00:00",
                treatment_started_at=utc("2026-11-24T23:00:00"),
                engaged=True,
            ),
            rel(6, "2026-11-10T12:00:00", treatment_started_at=utc("2026-11-25T00:30:00")),
            rel(7, "2026-11-10T12:00:00", at_risk=False, planned=False),
        ],
        referrals=[
            facts.referral_row(
                referral_id="S4",
                release_id="R4",
                patient="Patient/p4",
                released_at=released,
                category="treatment",
                accepted_at=released + timedelta(minutes=1),  # a minute late: not before
            ),
            facts.referral_row(
                referral_id="S5",
                release_id="R5",
                patient="Patient/p5",
                released_at=released,
                category="peer-support",
                accepted_at=released - timedelta(minutes=1),
            ),
        ],
        events=[
            facts.event_row(
                event_id="MedicationDispense/k1", kind="kit", occurred_at=released, quantity=2
            ),
            facts.event_row(
                event_id="SupplyDelivery/k2", kind="kit", occurred_at=utc("2026-12-01T00:00:00")
            ),
            facts.event_row(event_id="Observation/o1", kind="reversal", occurred_at=released),
        ],
    )
    params = {**NOV, "stratify": "month,facility,intercept,sex,age_band,stay_length,release_type"}
    report = (await client.get("/v1/measures", params=params)).json()
    m = by_id(report)
    assert m["education-before-release"]["denominator"] == 4  # R1, R4, R5, R6 (R7 not at risk)
    assert m["screening-24h"]["denominator"] == 5  # every release in the period
    assert m["contact-within-72h"]["numerator"] == 1  # R1 at 72 h exactly
    assert m["contact-within-24h"]["numerator"] == 0
    assert m["first-contact-median-hours"]["numerator"] == 2
    assert m["first-contact-median-hours"]["median_hours"] == pytest.approx(
        72 + 1 / 120, abs=0.01
    )  # rounded to 2 places
    assert m["treatment-initiation-14d"]["numerator"] == 1
    assert m["treatment-engagement-34d"]["numerator"] == 1
    assert m["referral-accepted-before-release-treatment"]["numerator"] == 0
    assert m["referral-accepted-before-release-peer-support"]["numerator"] == 1
    assert m["naloxone-kits-distributed"]["numerator"] == 2
    assert m["naloxone-kits-distributed"]["denominator"] is None
    assert m["overdose-reversals-reported"]["numerator"] == 1
    # Strata add up to the totals, for every proportion measure and stratifier.
    for measure in report["measures"]:
        if measure["scoring"] != "proportion":
            continue
        for name in params["stratify"].split(","):
            cells = [s for s in measure["strata"] if s["stratifier"] == name]
            assert sum(s["numerator"] for s in cells) == measure["numerator"], (measure["id"], name)
            assert sum(s["denominator"] for s in cells) == measure["denominator"]
    months = {s["value"] for s in m["screening-24h"]["strata"] if s["stratifier"] == "month"}
    assert months == {"2026-11"}
    planned = {
        s["value"]: s["denominator"]
        for s in m["screening-24h"]["strata"]
        if s["stratifier"] == "release_type"
    }
    assert planned == {"planned": 4, "unplanned": 1}
    # CSV: the same numbers, one row per measure, stratifier and value.
    r = await client.get("/v1/measures", params={**params, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == [
        "measure",
        "title",
        "stratifier",
        "value",
        "display",
        "numerator",
        "denominator",
        "rate",
        "median_hours",
    ]
    total = next(
        x for x in rows if x["measure"] == "treatment-initiation-14d" and not x["stratifier"]
    )
    assert (total["numerator"], total["denominator"], total["rate"]) == ("1", "4", "0.25")
    r = await client.get("/v1/measures", params=NOV, headers={"Accept": "text/csv"})
    assert r.text.startswith("measure,title,")
    # The jail counts its releases, but in referral numerators only referrals it is a party
    # to: the peer-support referral of R5 was made and received by others.
    jail = await org_client("Organization/J", scopes="system/MeasureReport.read")
    seen = by_id((await jail.get("/v1/measures", params=NOV)).json())
    assert seen["referral-accepted-before-release-peer-support"]["numerator"] == 0
    assert seen["education-before-release"]["denominator"] == "<11"


async def test_suppression_leaves_no_small_cell_recoverable(
    engine: AsyncEngine, client: httpx.AsyncClient, org_client: Any
) -> None:
    rows = []
    for i in range(20):
        rows.append(rel(100 + i, "2026-11-05T10:00:00", facility="Location/A"))
    for i in range(5):
        rows.append(rel(200 + i, "2026-11-06T10:00:00", facility="Location/B", sex="female"))
    # Another jail's releases never count for Organization/J.
    for i in range(30):
        rows.append(rel(300 + i, "2026-11-07T10:00:00", organization="Organization/K"))
    await _load(engine, rows)
    jail = await org_client("Organization/J", scopes="system/MeasureReport.read")
    params = {**NOV, "stratify": "facility,sex,month", "measure": "education-before-release"}
    report = (await jail.get("/v1/measures", params=params)).json()
    assert report["suppression"] == {"applied": True, "min_cell": 11, "shown_as": "<11"}
    measure = report["measures"][0]
    assert measure["denominator"] == 25 and measure["numerator"] == 0
    cells = {(s["stratifier"], s["value"]): s["denominator"] for s in measure["strata"]}
    # B (5) is suppressed, and A (20) too: 25 - A would give B back.
    assert cells[("facility", "Location/B")] == "<11"
    assert cells[("facility", "Location/A")] == "<11"
    assert cells[("sex", "female")] == "<11" and cells[("sex", "male")] == "<11"
    assert cells[("month", "2026-11")] == 25
    for name in ("facility", "sex", "month"):
        hidden = [v for (s, _), v in cells.items() if s == name and v == "<11"]
        assert len(hidden) != 1
    for value in cells.values():
        assert not (isinstance(value, int) and 1 <= value <= 10)
    # The administrator's full view is not suppressed, unless asked.
    full = (await client.get("/v1/measures", params=params)).json()
    assert full["measures"][0]["denominator"] == 55
    asked = (await client.get("/v1/measures", params={**params, "suppress": "true"})).json()
    assert asked["suppression"]["applied"] is True


async def test_a_facility_stratum_carries_the_locations_name(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        "/fhir/Location",
        json={"resourceType": "Location", "name": "North Annex", "status": "active"},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 201, r.text
    annex = f"Location/{r.json()['id']}"
    await _load(
        engine,
        [
            *[rel(700 + i, "2026-11-05T10:00:00", facility=annex) for i in range(12)],
            *[rel(720 + i, "2026-11-06T10:00:00", facility="Location/gone") for i in range(12)],
        ],
    )
    params = {**NOV, "stratify": "facility", "measure": "education-before-release"}
    [m] = (await client.get("/v1/measures", params=params)).json()["measures"]
    shown = {s["value"]: s["display"] for s in m["strata"]}
    # A Location that is not stored (or has no name) shows its reference only.
    assert shown == {annex: "North Annex", "Location/gone": None}
    r = await client.get("/v1/measures", params={**params, "format": "csv"})
    assert f"{annex},North Annex," in r.text


async def test_bad_requests_and_scope(client: httpx.AsyncClient, org_client: Any) -> None:
    r = await client.get("/v1/measures", params={"from": "2026-11-30", "to": "2026-11-01"})
    assert r.status_code == 422 and "before from" in r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    r = await client.get("/v1/measures", params={"from": "2020-01-01", "to": "2026-11-01"})
    assert r.status_code == 422 and "3 years" in r.text
    r = await client.get("/v1/measures", params={**NOV, "measure": "nope"})
    assert r.status_code == 422 and "Unknown measure nope" in r.text
    r = await client.get("/v1/measures", params={**NOV, "stratify": "race"})
    assert r.status_code == 422 and "Unknown stratifier race" in r.text
    r = await client.get("/v1/measures", params={"from": "2026-13-01", "to": "2026-11-01"})
    assert r.status_code in (400, 422)
    r = await client.get("/v1/measures", params={"to": "2026-11-01"})
    assert r.status_code in (400, 422)
    narrow = await org_client("Organization/J", scopes="system/Task.read")
    r = await narrow.get("/v1/measures", params=NOV)
    assert r.status_code == 403 and "MeasureReport" in r.text


async def test_fhir_measures_and_evaluate_measure(
    engine: AsyncEngine, client: httpx.AsyncClient, org_client: Any
) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.measure import Measure
    from fhir.resources.R4B.measurereport import MeasureReport

    rows = [rel(400 + i, "2026-11-05T10:00:00", facility="Location/A") for i in range(15)]
    rows += [rel(500 + i, "2026-11-06T10:00:00", facility="Location/B") for i in range(3)]
    rows += [rel(600, "2026-11-07T10:00:00", organization="Organization/K")]
    await _load(engine, rows)

    listed = (await client.get("/fhir/Measure")).json()
    assert listed["resourceType"] == "Bundle" and listed["total"] >= 15
    for entry in listed["entry"]:
        Measure.model_validate(entry["resource"])
    measure = (await client.get("/fhir/Measure/education-before-release")).json()
    assert measure["url"] == "https://handoff.dev/fhir/Measure/education-before-release"
    assert measure["version"] and measure["scoring"]["coding"][0]["code"] == "proportion"
    one = (await client.get("/fhir/Measure", params={"url": measure["url"]})).json()
    assert [e["resource"]["id"] for e in one["entry"]] == ["education-before-release"]
    r = await client.get("/fhir/Measure/nope")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"

    url = "/fhir/Measure/education-before-release/$evaluate-measure"
    period = {"periodStart": "2026-11-01", "periodEnd": "2026-11-30"}
    report = (await client.get(url, params=period)).json()
    MeasureReport.model_validate(report)
    assert (report["status"], report["type"]) == ("complete", "summary")
    group = report["group"][0]
    counts = {p["code"]["coding"][0]["code"]: p.get("count") for p in group["population"]}
    assert counts == {"initial-population": 19, "denominator": 19, "numerator": 0}
    assert group["measureScore"]["value"] == 0
    names = [s["code"][0]["text"] for s in group["stratifier"]]
    assert "facility" in names and "month" in names

    # POST Parameters, as an organization: small cells masked, not counted.
    jail = await org_client("Organization/J", scopes="system/MeasureReport.read")
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "periodStart", "valueDate": "2026-11-01"},
            {"name": "periodEnd", "valueDate": "2026-11-30"},
        ],
    }
    r = await jail.post(url, json=body, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    report = r.json()
    MeasureReport.model_validate(report)
    assert report["reporter"] == {"reference": "Organization/J"}
    facility = next(
        s for s in report["group"][0]["stratifier"] if s["code"][0]["text"] == "facility"
    )
    cells = {s["value"]["text"]: s["population"][1] for s in facility["stratum"]}
    assert "count" not in cells["Location/B"] and "count" not in cells["Location/A"]
    assert cells["Location/B"]["extension"][0]["valueCode"] == "masked"
    total = {
        p["code"]["coding"][0]["code"]: p.get("count") for p in report["group"][0]["population"]
    }
    assert total["denominator"] == 18  # Organization/K's release is not counted

    # Every measure at once: a Bundle of MeasureReports.
    everything = (await client.get("/fhir/Measure/$evaluate-measure", params=period)).json()
    Bundle.model_validate(everything)
    assert {e["resource"]["resourceType"] for e in everything["entry"]} == {"MeasureReport"}
    for entry in everything["entry"]:
        MeasureReport.model_validate(entry["resource"])

    # Unhappy paths.
    for bad in ([None, None], {"resourceType": "Parameters", "parameter": 3}, {"a": 1}):
        r = await client.post(url, json=bad, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    r = await client.get(url, params={"periodStart": "2026-11-01"})
    assert r.status_code == 400 and "periodEnd is required" in r.text, r.text
    r = await client.get(url, params={**period, "subject": "Patient/x"})
    assert r.status_code == 400 and "subject is not supported" in r.text
    r = await client.get(url, params={"periodStart": "2026-11-30", "periodEnd": "2026-11-01"})
    assert r.status_code == 422
    r = await jail.get(url, params={**period, "reporter": "Organization/K"})
    assert r.status_code == 403
    narrow = await org_client("Organization/J", scopes="system/Task.read")
    r = await narrow.get(url, params=period)
    assert r.status_code == 403
    r = await narrow.post(url, json=body, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 403
