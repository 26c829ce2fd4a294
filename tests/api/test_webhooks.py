"""/v1/webhooks: signed JSON messages (Standard Webhooks) for the referrals a jail made,
delivered by the notification worker to real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.api.routes.v1_webhooks import WebhookEvents, WebhookMessage, WebhookView
from service.features.subscriptions.worker import Worker
from tests.api.test_disclosure_paths import accept, put, read
from tests.api.test_disclosure_paths import net as net  # the fixture
from tests.api.test_subscriptions import receiver as receiver  # the fixture
from tests.api.test_subscriptions import settings as settings  # the fixture
from tests.api.test_subscriptions import worker as worker  # the fixture
from tests.receivers import Receiver

pytestmark = pytest.mark.usefixtures("instruments")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


async def register(
    c: httpx.AsyncClient, url: str, secret: str, events: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    r = await c.post(
        "/v1/webhooks",
        json={"url": url, "secret": secret, "events": events or ["accepted"], **extra},
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    WebhookView.model_validate(body)  # the documented answer is what is sent
    return body


def messages(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """What arrived, each verified with the Standard Webhooks library and validated against
    the documented message schema."""
    hook = Webhook(secret)
    out = [hook.verify(r.body, r.headers) for r in receiver.received]
    for message in out:
        WebhookMessage.model_validate(message)
    return out


async def test_messages_are_signed_numbered_and_say_what_happened(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    jail, otp = net["jail"], net["otp"]
    secret = new_secret()
    hook = await register(jail, receiver.url, secret, ["accepted", "milestone"])
    assert hook["status"] == "active" and "secret" not in hook
    accepted = await accept(net)
    await put(otp, accepted, businessStatus={"text": "INTAKE-SCHEDULED"})
    await worker.drain()
    first, second = messages(receiver, secret)
    assert first["type"] == "referral.accepted" and second["type"] == "referral.milestone"
    assert [first["data"]["event_number"], second["data"]["event_number"]] == [1, 2]
    data = first["data"]
    assert data["referral_id"] == net["ref"]["referral_id"]
    assert data["task_id"] == net["ref"]["task_id"] and data["status"] == "accepted"
    assert data["owner"] == net["ids"]["otp"]
    # What a message says of the Task is what the jail may read of that version.
    shown = await read(jail, f"Task/{data['task_id']}/_history/{data['task_version']}")
    assert shown["status"] == data["status"]
    assert data["links"]["referral"].endswith(f"/v1/referrals/{net['ref']['referral_id']}")
    headers = receiver.received[0].headers
    assert headers["webhook-id"] == f"msg_{hook['id'].replace('-', '')}_1"
    # A body changed on the way does not verify.
    tampered = receiver.received[0].body.replace(b"accepted", b"rejected")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(receiver.received[0].body, headers)
    status = (await jail.get(f"/v1/webhooks/{hook['id']}")).json()
    assert status["events_count"] == 2 and status["delivered_through"] == 2


async def test_a_rejection_carries_its_reason_and_unwanted_events_are_not_sent(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    jail, otp = net["jail"], net["otp"]
    secret = new_secret()
    await register(jail, receiver.url, secret, ["rejected"])
    task = await read(otp, f"Task/{net['ref']['task_id']}")
    r = await put(otp, task, status="rejected", statusReason={"text": "No capacity this month"})
    assert r.status_code == 200, r.text
    await worker.drain()
    [only] = messages(receiver, secret)
    assert only["type"] == "referral.rejected"
    assert only["data"]["event_number"] == 1 and only["data"]["status"] == "rejected"
    # The provider's reason is its Part 2 record: without a consent naming the jail, the
    # message says what a read by the jail says, and no more.
    shown = await read(net["jail"], f"Task/{only['data']['task_id']}")
    assert only["data"]["reason"] == shown["statusReason"]["text"]
    assert "No capacity" not in str(only)


async def test_a_retry_keeps_its_message_id_and_a_receiver_down_recovers_from_events(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    jail, otp = net["jail"], net["otp"]
    secret = new_secret()
    hook = await register(jail, receiver.url, secret, ["accepted", "milestone"])
    receiver.status = 500
    accepted = await accept(net)
    await put(otp, accepted, businessStatus={"text": "INTAKE-SCHEDULED"})
    await worker.drain()
    attempts = [r.headers["webhook-id"] for r in receiver.received]
    assert len(attempts) == 2 and len(set(attempts)) == 1  # the same message, retried
    status = (await jail.get(f"/v1/webhooks/{hook['id']}")).json()
    assert status["status"] == "error" and "500" in status["error"]
    assert status["delivered_through"] == 0 and status["events_count"] == 2
    # The receiver is back: the jail reads what it missed, then resumes the webhook.
    missed = await jail.get(f"/v1/webhooks/{hook['id']}/events", params={"since": 0})
    assert missed.status_code == 200, missed.text
    WebhookEvents.model_validate(missed.json())
    assert [e["type"] for e in missed.json()["events"]] == [
        "referral.accepted",
        "referral.milestone",
    ]
    assert [e["data"]["event_number"] for e in missed.json()["events"]] == [1, 2]
    receiver.status = 200
    body = {"url": receiver.url, "secret": secret, "events": ["accepted", "milestone"]}
    r = await jail.put(f"/v1/webhooks/{hook['id']}", json=body)
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    latest = await read(otp, f"Task/{net['ref']['task_id']}")
    await put(otp, latest, businessStatus={"text": "FIRST-VISIT"})
    await worker.drain()
    # Two failed attempts of #1, then #3: what was missed is not resent, numbers go on.
    assert [m["data"]["event_number"] for m in messages(receiver, secret)] == [1, 1, 3]


async def test_a_gone_receiver_stops_delivery_at_once(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    jail = net["jail"]
    hook = await register(jail, receiver.url, new_secret())
    receiver.status = 410
    await accept(net)
    await worker.drain()
    assert len(receiver.received) == 1  # no retry after 410 Gone
    status = (await jail.get(f"/v1/webhooks/{hook['id']}")).json()
    assert status["status"] == "error" and "410" in status["error"]


async def test_release_imminent_is_announced_once(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    jail = net["jail"]
    secret = new_secret()
    await register(jail, receiver.url, secret, ["release-imminent"], release_hours=96)
    await worker.drain()
    await worker.drain()  # a second scan finds the same referral: no second message
    [only] = messages(receiver, secret)
    assert only["type"] == "referral.release_imminent"
    assert only["data"]["referral_id"] == net["ref"]["referral_id"]
    assert only["data"]["expected_release_at"]


async def test_only_the_referring_organization_hears_of_its_referrals(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    other = net["otp2"]
    await register(other, receiver.url, new_secret(), ["accepted", "release-imminent"])
    await accept(net)
    await worker.drain()
    assert receiver.received == []


async def test_registration_is_idempotent_per_url_and_private_to_its_organization(
    net: dict[str, Any], receiver: Receiver
) -> None:
    jail, otp = net["jail"], net["otp"]
    secret = new_secret()
    hook = await register(jail, receiver.url, secret)
    again = await jail.post(
        "/v1/webhooks", json={"url": receiver.url, "secret": secret, "events": ["accepted"]}
    )
    assert again.status_code == 200 and again.json()["id"] == hook["id"]
    assert [h["id"] for h in (await jail.get("/v1/webhooks")).json()] == [hook["id"]]
    assert (await otp.get("/v1/webhooks")).json() == []
    for r in (
        await otp.get(f"/v1/webhooks/{hook['id']}"),
        await otp.get(f"/v1/webhooks/{hook['id']}/events"),
        await otp.delete(f"/v1/webhooks/{hook['id']}"),
    ):
        assert r.status_code == 404, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    assert (await jail.delete(f"/v1/webhooks/{hook['id']}")).status_code == 204
    assert (await jail.get(f"/v1/webhooks/{hook['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ({"url": "http://jms.example.org/hook"}, "url"),
        ({"url": "ftp://jms.example.org/hook"}, "url"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode() + "A" * 30}, "secret"),
        ({"secret": "not-a-standard-secret-at-all-but-long-enough"}, "secret"),
        ({"events": ["admitted"]}, "events"),
        ({"events": []}, "events"),
        ({"release_hours": 0}, "release_hours"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_a_bad_registration_names_the_field(
    net: dict[str, Any], change: dict[str, Any], element: str
) -> None:
    body = {"url": "https://jms.example.org/hook", "secret": new_secret(), "events": ["accepted"]}
    r = await net["jail"].post("/v1/webhooks", json={**body, **change})
    assert r.status_code in (400, 422), r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert element in str(outcome["issue"]), outcome
    assert (await net["jail"].get("/v1/webhooks")).json() == []


async def test_a_token_that_cannot_read_tasks_cannot_register(
    net: dict[str, Any], org_client: Any
) -> None:
    narrow = await org_client(net["ids"]["jail"], scopes="system/ServiceRequest.cruds")
    body = {"url": "https://jms.example.org/hook", "secret": new_secret(), "events": ["accepted"]}
    r = await narrow.post("/v1/webhooks", json=body)
    assert r.status_code == 403, r.text
    assert "Task" in r.json()["issue"][0]["diagnostics"]
