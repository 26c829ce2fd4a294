"""The ServiceRequest and consent-change topics, a disabled subscriber, event retention and the
type-level ``$status`` filter, on a jail's referral to a treatment program."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.features.subscriptions.worker import Worker
from service.settings import Settings
from service.storage import clients as client_store
from service.storage import subscriptions as store
from service.storage.db import write_transaction
from tests.api.test_disclosure_paths import net as net  # the fixture
from tests.api.test_subscriptions import FHIR_JSON, assert_r4, subscribe
from tests.api.test_subscriptions import receiver as receiver  # the fixture
from tests.api.test_subscriptions import settings as settings  # the fixture
from tests.api.test_subscriptions import worker as worker  # the fixture
from tests.builders import fhir_consent, in_future, subscription
from tests.receivers import Receiver, event_numbers, focuses, status_parameter

pytestmark = pytest.mark.usefixtures("instruments")

SR_TOPIC = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Servicerequest"
CONSENT_TOPIC = "https://handoff.dev/fhir/SubscriptionTopic/consent-change"


def _events(receiver: Receiver) -> list[tuple[int, str | None]]:
    return [
        (n, f)
        for b in receiver.of_type("event-notification")
        for n, f in zip(event_numbers(b), focuses(b), strict=True)
    ]


async def test_a_changed_referral_notifies_the_service_request_topic(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    otp, jail = net["otp"], net["jail"]
    sr = net["ref"]["referral_id"]
    await subscribe(
        otp, subscription(receiver.url, topic=SR_TOPIC, filters=[f"ServiceRequest?_id={sr}"])
    )
    await worker.drain()
    r = await jail.patch(
        f"/v1/referrals/{sr}", json={"release": {"expected_at": in_future(days=5)}}
    )
    assert r.status_code == 200, r.text
    await worker.drain()
    events = _events(receiver)
    assert events and all(f == f"ServiceRequest/{sr}" for _, f in events)
    assert [n for n, _ in events] == list(range(1, len(events) + 1))
    for bundle in receiver.of_type("event-notification"):
        assert_r4(bundle)


async def test_a_service_request_filter_on_another_organizations_referral_is_refused(
    net: dict[str, Any], receiver: Receiver
) -> None:
    sr = net["ref"]["referral_id"]
    body = subscription(receiver.url, topic=SR_TOPIC, filters=[f"ServiceRequest?_id={sr}"])
    r = await net["ssp"].post("/fhir/Subscription", json=body, headers=FHIR_JSON)
    assert r.status_code == 422, r.text
    assert "cannot read" in r.json()["issue"][0]["diagnostics"]


async def test_a_consent_naming_the_provider_notifies_it_and_no_bystander(
    net: dict[str, Any], worker: Worker
) -> None:
    jail, otp, ssp, ids = net["jail"], net["otp"], net["ssp"], net["ids"]
    patient = f"Patient/{net['ref']['patient_id']}"
    heard, bystander = Receiver().start(), Receiver().start()
    try:
        filters = [f"Consent?patient={patient}"]
        await subscribe(otp, subscription(heard.url, topic=CONSENT_TOPIC, filters=filters))
        await subscribe(ssp, subscription(bystander.url, topic=CONSENT_TOPIC, filters=filters))
        await worker.drain()
        given = await fhir_consent(jail, patient, custodian=ids["jail"], recipients=[ids["otp"]])
        await worker.drain()
        assert _events(heard) == [(1, f"Consent/{given['id']}")]
        assert _events(bystander) == []  # a Consent it may not read is never named
    finally:
        heard.stop()
        bystander.stop()


async def test_a_disabled_subscriber_goes_to_error(
    net: dict[str, Any], receiver: Receiver, worker: Worker, engine: AsyncEngine
) -> None:
    otp, ids = net["otp"], net["ids"]
    sub = await subscribe(otp, subscription(receiver.url, filters=[f"Task?owner={ids['otp']}"]))
    await worker.drain()
    async with write_transaction(engine) as conn:
        state = await store.get_state(conn, sub["id"])
        assert state is not None
        await client_store.set_disabled(conn, state.client_id, True)
    task = (await net["admin"].get(f"/fhir/Task/{net['ref']['task_id']}")).json()
    r = await net["admin"].put(
        f"/fhir/Task/{task['id']}",
        json={**task, "status": "accepted"},
        headers={**FHIR_JSON, "If-Match": f'W/"{task["meta"]["versionId"]}"'},
    )
    assert r.status_code == 200, r.text
    await worker.drain()
    assert receiver.of_type("event-notification") == []
    read = (await net["admin"].get(f"/fhir/Subscription/{sub['id']}")).json()
    assert read["status"] == "error" and "disabled" in read["error"]


async def test_expired_events_are_purged_and_no_longer_served(
    net: dict[str, Any], receiver: Receiver, app: Any, engine: AsyncEngine, settings: Settings
) -> None:
    otp, ids = net["otp"], net["ids"]
    sub = await subscribe(otp, subscription(receiver.url, filters=[f"Task?owner={ids['otp']}"]))
    keeping = Worker(engine, settings, app.state.rules)
    await keeping.drain()
    task = (await otp.get(f"/fhir/Task/{net['ref']['task_id']}")).json()
    r = await otp.put(
        f"/fhir/Task/{task['id']}",
        json={**task, "status": "accepted"},
        headers={**FHIR_JSON, "If-Match": f'W/"{task["meta"]["versionId"]}"'},
    )
    assert r.status_code == 200, r.text
    await keeping.drain()
    await keeping.close()
    events = f"/fhir/Subscription/{sub['id']}/$events"
    kept = (await otp.get(events, params={"eventsSinceNumber": "1"})).json()
    assert len(kept["entry"]) == 2  # the status, and event #1
    # A worker whose retention is zero hours purges everything recorded before now.
    purging = Worker(
        engine,
        settings.model_copy(update={"subscription_event_retention_hours": 0}),
        app.state.rules,
    )
    await purging.purge()
    await purging.close()
    gone = (await otp.get(events, params={"eventsSinceNumber": "1"})).json()
    assert len(gone["entry"]) == 1  # the status alone: the event is past its retention
    params = {"entry": [gone["entry"][0]]}
    assert status_parameter(params, "events-since-subscription-start")[0]["valueString"] == "1"


async def test_type_level_status_filters_by_status(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    otp, ids = net["otp"], net["ids"]
    down = Receiver(status=503).start()
    try:
        good = await subscribe(
            otp, subscription(receiver.url, filters=[f"Task?owner={ids['otp']}"])
        )
        bad = await subscribe(otp, subscription(down.url, filters=[f"Task?owner={ids['otp']}"]))
        await worker.drain()
    finally:
        down.stop()

    async def ids_with(status: str) -> list[str]:
        r = await otp.get("/fhir/Subscription/$status", params={"status": status})
        assert r.status_code == 200, r.text
        return [
            p["valueReference"]["reference"].rsplit("/", 1)[-1]
            for e in r.json().get("entry", [])
            for p in e["resource"]["parameter"]
            if p["name"] == "subscription"
        ]

    assert await ids_with("error") == [bad["id"]]
    assert await ids_with("active") == [good["id"]]
    assert sorted(await ids_with("active,error")) == sorted([good["id"], bad["id"]])
