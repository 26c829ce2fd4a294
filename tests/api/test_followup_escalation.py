"""Overdue follow-ups: a follow-up window that passes without a contact that reached the person
is marked overdue by the notification worker's scan, once, and the escalation reaches the
program's Task-topic subscription and its ``follow-up-overdue`` webhook; a later contact that
reaches the person still completes it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from service.api.routes.v1_webhooks import WebhookMessage
from service.features.subscriptions.worker import Worker
from service.settings import Settings
from tests.api.test_custody import at
from tests.api.test_followups import accepted, follow_ups, instant, release
from tests.api.test_referrals import network  # noqa: F401
from tests.api.test_subscriptions import receiver as receiver  # the fixture
from tests.api.test_subscriptions import settings as settings  # the fixture
from tests.api.test_subscriptions import subscribe
from tests.api.test_subscriptions import worker as worker  # the fixture
from tests.api.test_webhooks import new_secret
from tests.builders import subscription
from tests.receivers import Receiver, focuses

pytestmark = pytest.mark.usefixtures("instruments")

OVERDUE = "https://handoff.dev/fhir/CodeSystem/follow-up"


def overdue(task: dict[str, Any]) -> bool:
    return any(
        c.get("system") == OVERDUE and c.get("code") == "overdue"
        for c in (task.get("businessStatus") or {}).get("coding", [])
    )


async def hook(c: httpx.AsyncClient, url: str, secret: str) -> None:
    r = await c.post(
        "/v1/webhooks", json={"url": url, "secret": secret, "events": ["follow-up-overdue"]}
    )
    assert r.status_code == 201, r.text


def verified(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    out = [Webhook(secret).verify(r.body, r.headers) for r in receiver.received]
    for message in out:
        WebhookMessage.model_validate(message)
    return out


async def test_a_passed_window_escalates_once_and_a_later_contact_completes_it(
    network: dict[str, Any],  # noqa: F811
    receiver: Receiver,
    worker: Worker,
) -> None:
    jail, otp, ids = network["jail"], network["otp"], network["ids"]
    ref = await accepted(network)
    secret = new_secret()
    await hook(otp, receiver.url, secret)
    fhir = Receiver().start()
    bystander = Receiver().start()
    try:
        await subscribe(otp, subscription(fhir.url, filters=[f"Task?owner={ids['otp']}"]))
        # The jail made the referral, but the follow-ups are the program's own records.
        await hook(jail, bystander.url, new_secret())
        released = at(-30)  # the 24-hour contact was due 6 hours ago
        await release(jail, released)
        await worker.drain()
        await worker.drain()  # a second scan finds the Task marked: no second escalation
        tasks = await follow_ups(otp, ref)
        first, *later = tasks
        assert overdue(first) and first["priority"] == "urgent" and first["status"] == "ready"
        assert not any(overdue(t) for t in later)
        history = (await otp.get(f"/fhir/Task/{first['id']}/_history")).json()
        assert [overdue(e["resource"]) for e in history["entry"]] == [True, False]  # one mark
        [message] = verified(receiver, secret)
        assert message["type"] == "follow-up.overdue"
        data = message["data"]
        assert data["task_id"] == first["id"] and data["referral_id"] == ref["referral_id"]
        assert data["due_at"] == first["restriction"]["period"]["end"]
        assert data["released_at"] == first["restriction"]["period"]["start"]
        assert instant(data["released_at"]) == instant(released)
        assert data["patient_id"] == ref["patient_id"]
        assert data["milestone"]["code"] == "overdue" and data["owner"] == ids["otp"]
        notified = [f for b in fhir.of_type("event-notification") for f in focuses(b)]
        assert notified.count(f"Task/{first['id']}") == 1
        assert bystander.received == []  # another organization hears nothing of it
        # The program's worklist shows it overdue; a contact that reaches the person still
        # completes it, and that is no second escalation.
        worklist = (await otp.get("/v1/follow-ups", params={"bucket": "overdue"})).json()
        assert [i["task_id"] for i in worklist] == [first["id"]]
        contact = {"at": at(0), "medium": "phone", "reached": True}
        r = await otp.post(f"/v1/people/{ref['patient_id']}/contacts", json=contact)
        assert r.status_code == 201, r.text
        assert r.json()["follow_up"] == first["id"]
        done = (await otp.get(f"/fhir/Task/{first['id']}")).json()
        assert done["status"] == "completed"
        await worker.drain()
        assert len(verified(receiver, secret)) == 1
    finally:
        fhir.stop()
        bystander.stop()


async def test_a_contact_before_the_deadline_does_not_escalate(
    network: dict[str, Any],  # noqa: F811
    receiver: Receiver,
    worker: Worker,
) -> None:
    jail, otp = network["jail"], network["otp"]
    ref = await accepted(network)
    secret = new_secret()
    await hook(otp, receiver.url, secret)
    await release(jail, at(-30))
    contact = {"at": at(-10), "medium": "in-person", "reached": True}  # before the 24 hours
    r = await otp.post(f"/v1/people/{ref['patient_id']}/contacts", json=contact)
    assert r.status_code == 201, r.text
    await worker.drain()
    tasks = await follow_ups(otp, ref)
    assert tasks[0]["status"] == "completed"
    assert not any(overdue(t) for t in tasks)
    assert receiver.received == []


async def test_a_corrected_release_that_moves_the_window_ahead_clears_the_mark(
    network: dict[str, Any],  # noqa: F811
    worker: Worker,
) -> None:
    jail, otp = network["jail"], network["otp"]
    ref = await accepted(network)
    await release(jail, at(-30))
    await worker.drain()
    assert overdue((await follow_ups(otp, ref))[0])
    await release(jail, at(-1))  # corrected: released an hour ago, the first contact is ahead
    first = (await follow_ups(otp, ref))[0]
    assert not overdue(first) and first["priority"] == "routine"
    await worker.drain()
    assert not overdue((await follow_ups(otp, ref))[0])


async def test_workers_scanning_at_once_mark_a_follow_up_once(
    network: dict[str, Any],  # noqa: F811
    worker: Worker,
    app: Any,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    jail, otp = network["jail"], network["otp"]
    ref = await accepted(network)
    await release(jail, at(-30))
    other = Worker(engine, settings, app.state.rules)  # a second replica
    try:
        for _ in range(3):
            await asyncio.gather(worker.match(), other.match())
    finally:
        await other.close()
    first = (await follow_ups(otp, ref))[0]
    history = (await otp.get(f"/fhir/Task/{first['id']}/_history")).json()
    assert [overdue(e["resource"]) for e in history["entry"]] == [True, False]
