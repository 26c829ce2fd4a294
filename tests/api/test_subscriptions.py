"""FHIR Subscriptions (Backport IG 1.1.0, rest-hook): validation, handshake, events, filters,
payloads, $status and $events, delivered by the worker to real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.features.subscriptions.worker import Worker
from service.fhir.r4 import SUPPORTED_TYPES, r4_resource_model
from service.fhir.validate import validate_resource
from service.settings import Settings
from tests.api.test_tenancy import Network, created
from tests.api.test_tenancy import net as net  # the fixture
from tests.builders import jms_referral, patient, subscription, task
from tests.receivers import Receiver, event_numbers, focuses, notification_type, status_parameter

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database_url=database_url,
        public_base_url=None,
        gc_gen0_threshold=0,
        max_concurrent_per_client=1000,
        subscription_allow_local_http=True,
        subscription_poll_seconds=0.05,
        subscription_retry_seconds=0.05,
        subscription_timeout_seconds=2,
        subscription_lease_seconds=1,
        subscription_max_failures=2,
        subscription_release_scan_seconds=0.05,
        _env_file=None,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
async def worker(app: Any, engine: AsyncEngine, settings: Settings) -> AsyncIterator[Worker]:
    w = Worker(engine, settings, app.state.rules)
    yield w
    await w.close()


async def subscribe(c: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await c.post("/fhir/Subscription", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def referral_task(
    net: Network, *, owner: str | None = None, status: str = "requested"
) -> dict[str, Any]:
    p = await created(net.a, patient())
    return await created(
        net.a,
        task(
            requester=net.org_a,
            owner=owner or net.org_b,
            patient_ref=f"Patient/{p['id']}",
            focus="ServiceRequest/sr-1",
            status=status,
        ),
    )


def assert_r4(bundle: dict[str, Any]) -> None:
    model = r4_resource_model("Bundle")  # the R4 model (Bundle is not a stored type)
    assert model is not None
    model.model_validate(bundle)
    for entry in bundle["entry"]:
        assert "request" in entry  # history Bundles: every entry says what happened
        if "resource" in entry and entry["resource"]["resourceType"] in SUPPORTED_TYPES:
            validate_resource(entry["resource"], expected_type=entry["resource"]["resourceType"])
    assert bundle["type"] == "history"
    params = bundle["entry"][0]["resource"]
    assert params["resourceType"] == "Parameters"
    assert bundle["entry"][0]["request"]["method"] == "GET"


# --- the handshake --------------------------------------------------------------------------


async def test_handshake_activates_the_subscription(
    net: Network, receiver: Receiver, worker: Worker
) -> None:
    sub = await subscribe(
        net.b,
        subscription(
            receiver.url, filters=[f"Task?owner={net.org_b}"], headers=["X-Shared: s3cret"]
        ),
    )
    assert sub["status"] == "requested"
    await worker.drain()
    [handshake] = receiver.bundles()
    assert_r4(handshake)
    assert notification_type(handshake) == "handshake"
    assert status_parameter(handshake, "events-since-subscription-start")[0]["valueString"] == "0"
    assert receiver.received[0].headers["X-Shared"] == "s3cret"
    assert receiver.received[0].headers["Content-Type"].startswith("application/fhir+json")
    read = (await net.b.get(f"/fhir/Subscription/{sub['id']}")).json()
    assert read["status"] == "active"
    status = (await net.b.get(f"/fhir/Subscription/{sub['id']}/$status")).json()
    assert status["type"] == "searchset"
    params = status["entry"][0]["resource"]
    assert status_parameter({"entry": [{"resource": params}]}, "status")[0]["valueCode"] == "active"


async def test_handshake_failure_puts_it_in_error_with_the_reason(
    net: Network, worker: Worker
) -> None:
    down = Receiver(status=503).start()
    try:
        sub = await subscribe(net.b, subscription(down.url, filters=[f"Task?owner={net.org_b}"]))
        await worker.drain()
    finally:
        down.stop()
    read = (await net.b.get(f"/fhir/Subscription/{sub['id']}")).json()
    assert read["status"] == "error"
    assert "503" in read["error"]
    status = (await net.b.get("/fhir/Subscription/$status", params={"id": sub["id"]})).json()
    params = {"entry": [{"resource": status["entry"][0]["resource"]}]}
    assert status_parameter(params, "status")[0]["valueCode"] == "error"
    assert "503" in status_parameter(params, "error")[0]["valueCodeableConcept"]["text"]


# --- events -----------------------------------------------------------------------------------


async def test_task_changes_are_numbered_events(
    net: Network, receiver: Receiver, worker: Worker
) -> None:
    sub = await subscribe(net.b, subscription(receiver.url, filters=[f"Task?owner={net.org_b}"]))
    await worker.drain()
    t = await referral_task(net)
    await worker.drain()
    r = await net.b.put(
        f"/fhir/Task/{t['id']}",
        json={**t, "status": "accepted"},
        headers={**FHIR_JSON, "If-Match": 'W/"1"'},
    )
    assert r.status_code == 200, r.text
    await worker.drain()
    events = receiver.of_type("event-notification")
    assert [n for b in events for n in event_numbers(b)] == [1, 2]
    assert [f for b in events for f in focuses(b)] == [f"Task/{t['id']}"] * 2
    for b in events:
        assert_r4(b)
        assert all("resource" not in e for e in b["entry"][1:])  # id-only
    last = events[-1]
    assert status_parameter(last, "events-since-subscription-start")[0]["valueString"] == "2"
    # $events returns them again, as history
    again = (await net.b.get(f"/fhir/Subscription/{sub['id']}/$events")).json()
    assert event_numbers(again) == [1, 2]
    assert notification_type(again) == "query-event"


async def test_filters_owner_status_and_other_organizations(
    net: Network, receiver: Receiver, worker: Worker
) -> None:
    other = Receiver().start()
    try:
        await subscribe(
            net.b, subscription(receiver.url, filters=[f"Task?owner={net.org_b}&status=accepted"])
        )
        await subscribe(net.c, subscription(other.url, filters=[f"Task?owner={net.org_c}"]))
        await worker.drain()
        t = await referral_task(net)  # requested: not matched by the status filter
        await worker.drain()
        assert receiver.of_type("event-notification") == []
        r = await net.b.put(
            f"/fhir/Task/{t['id']}",
            json={**t, "status": "accepted"},
            headers={**FHIR_JSON, "If-Match": 'W/"1"'},
        )
        assert r.status_code == 200
        await worker.drain()
        assert [f for b in receiver.of_type("event-notification") for f in focuses(b)] == [
            f"Task/{t['id']}"
        ]
        assert other.of_type("event-notification") == []  # org C cannot read it
    finally:
        other.stop()


async def test_requester_filter(net: Network, receiver: Receiver, worker: Worker) -> None:
    await subscribe(net.a, subscription(receiver.url, filters=[f"Task?requester={net.org_a}"]))
    await worker.drain()
    t = await referral_task(net)
    await worker.drain()
    assert [f for b in receiver.of_type("event-notification") for f in focuses(b)] == [
        f"Task/{t['id']}"
    ]


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "element", "words"),
    [
        (
            {"criteria": "http://example.org/SubscriptionTopic/nope"},
            422,
            "Subscription.criteria",
            "not a topic",
        ),
        (
            {"filters": ["Task?focus=ServiceRequest/1"]},
            422,
            "backport-filter-criteria",
            "does not allow the filter 'focus'",
        ),
        (
            {"endpoint": "http://receiver.example.org/hook"},
            422,
            "Subscription.channel.endpoint",
            "not https",
        ),
        ({"channel_type": "email"}, 422, "Subscription.channel.type", "rest-hook only"),
        (
            {"payload": "application/fhir+xml"},
            422,
            "Subscription.channel.payload",
            "application/fhir+json",
        ),
        ({"content": "everything"}, 422, "backport-payload-content", "id-only"),
        (
            {"filters": ["Task?owner=Organization/someone-else"]},
            403,
            "backport-filter-criteria",
            "may subscribe only",
        ),
    ],
)
async def test_refusals_name_the_element(
    net: Network, change: dict[str, Any], status: int, element: str, words: str
) -> None:
    kwargs: dict[str, Any] = {"filters": [f"Task?owner={net.org_b}"]}
    kwargs.update({k: v for k, v in change.items() if k != "criteria"})
    endpoint = kwargs.pop("endpoint", "https://receiver.example.org/hook")
    body = subscription(endpoint, **kwargs)
    if "criteria" in change:
        body["criteria"] = change["criteria"]
    r = await net.b.post("/fhir/Subscription", json=body, headers=FHIR_JSON)
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert words in issue["diagnostics"]
    assert any(element in e for e in issue["expression"]), issue


async def test_plain_http_on_this_machine_needs_the_development_setting(
    net: Network, app: Any
) -> None:
    app.state.settings.subscription_allow_local_http = False
    r = await net.b.post(
        "/fhir/Subscription",
        json=subscription("http://127.0.0.1:9/hook", filters=[f"Task?owner={net.org_b}"]),
        headers=FHIR_JSON,
    )
    assert r.status_code == 422
    assert "HANDOFF_SUBSCRIPTION_ALLOW_LOCAL_HTTP" in r.json()["issue"][0]["diagnostics"]


async def test_subscriptions_belong_to_their_organization(net: Network) -> None:
    sub = await subscribe(
        net.b,
        subscription("https://receiver.example.org/hook", filters=[f"Task?owner={net.org_b}"]),
    )
    assert (await net.c.get(f"/fhir/Subscription/{sub['id']}")).status_code == 404
    assert (await net.c.get(f"/fhir/Subscription/{sub['id']}/$status")).status_code == 404
    assert (await net.c.get(f"/fhir/Subscription/{sub['id']}/$events")).status_code == 404
    mine = (await net.c.get("/fhir/Subscription/$status")).json()
    assert mine["total"] == 0


async def test_capability_statement_lists_the_topics(anon_client: httpx.AsyncClient) -> None:
    cs = (await anon_client.get("/fhir/metadata")).json()
    assert (
        "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/"
        "backport-subscription-server-r4" in cs["instantiates"]
    )
    [entry] = [r for r in cs["rest"][0]["resource"] if r["type"] == "Subscription"]
    topics = {e["valueCanonical"] for e in entry["extension"]}
    assert "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task" in topics
    assert {o["name"] for o in entry["operation"]} == {"status", "events"}


# --- heartbeats, payloads, failures and recovery --------------------------------------------


async def run_until(worker: Worker, done: Any, seconds: float = 15.0) -> None:
    """Let the worker run on its own (as in `handoff serve`) until ``done()`` or ``seconds``."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while not done() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def test_heartbeats_when_idle(
    net: Network, receiver: Receiver, app: Any, engine: Any
) -> None:
    await subscribe(
        net.b, subscription(receiver.url, filters=[f"Task?owner={net.org_b}"], heartbeat=1)
    )
    worker = Worker(engine, app.state.settings, app.state.rules)
    await run_until(worker, lambda: len(receiver.of_type("heartbeat")) >= 2)
    await worker.close()
    beats = receiver.of_type("heartbeat")
    assert len(beats) >= 2
    assert_r4(beats[0])
    assert status_parameter(beats[0], "status")[0]["valueCode"] == "active"
    assert len(beats[0]["entry"]) == 1  # the status only


async def test_empty_payload_names_nothing(
    net: Network, receiver: Receiver, worker: Worker
) -> None:
    await subscribe(
        net.b, subscription(receiver.url, filters=[f"Task?owner={net.org_b}"], content="empty")
    )
    await worker.drain()
    t = await referral_task(net)
    await worker.drain()
    [event] = receiver.of_type("event-notification")
    assert_r4(event)
    assert event_numbers(event) == [1]
    assert focuses(event) == [None]
    assert len(event["entry"]) == 1
    assert t["id"] not in json.dumps(event)


async def test_a_receiver_down_for_a_while_recovers_what_it_missed_with_events(
    net: Network, receiver: Receiver, worker: Worker
) -> None:
    sub = await subscribe(net.b, subscription(receiver.url, filters=[f"Task?owner={net.org_b}"]))
    await worker.drain()
    receiver.status = 500  # down: every attempt fails, then the subscription is in error
    missed = [await referral_task(net), await referral_task(net)]
    await worker.drain()
    read = (await net.b.get(f"/fhir/Subscription/{sub['id']}")).json()
    assert read["status"] == "error" and "500" in read["error"]
    receiver.status = 200  # back: the client reactivates its subscription
    r = await net.b.put(f"/fhir/Subscription/{sub['id']}", json=read, headers=FHIR_JSON)
    assert r.status_code == 200 and r.json()["status"] == "requested", r.text
    await worker.drain()
    assert (await net.b.get(f"/fhir/Subscription/{sub['id']}")).json()["status"] == "active"
    after = await referral_task(net)
    await worker.drain()
    answered = receiver.of_type("event-notification")
    # Only what the receiver answered 2xx counts as received: the last notification is #3.
    assert event_numbers(answered[-1]) == [3]
    assert focuses(answered[-1]) == [f"Task/{after['id']}"]
    gap = await net.b.get(
        f"/fhir/Subscription/{sub['id']}/$events",
        params={"eventsSinceNumber": "1", "eventsUntilNumber": "2"},
    )
    assert gap.status_code == 200, gap.text
    assert_r4(gap.json())
    assert event_numbers(gap.json()) == [1, 2]
    assert focuses(gap.json()) == [f"Task/{t['id']}" for t in missed]
    bad = await net.b.get(
        f"/fhir/Subscription/{sub['id']}/$events", params={"eventsSinceNumber": "one"}
    )
    assert bad.status_code == 400 and "eventsSinceNumber" in bad.text


async def test_a_hanging_receiver_does_not_delay_the_others(
    net: Network, receiver: Receiver, app: Any, engine: Any
) -> None:
    slow = Receiver(delay=8.0).start()
    try:
        await subscribe(
            net.b,
            subscription(slow.url, filters=[f"Task?owner={net.org_b}"], timeout=1),
        )
        healthy = await subscribe(
            net.b, subscription(receiver.url, filters=[f"Task?owner={net.org_b}"])
        )
        worker = Worker(engine, app.state.settings, app.state.rules)
        await run_until(worker, lambda: bool(receiver.of_type("handshake")))
        t = await referral_task(net)
        created_at = asyncio.get_running_loop().time()
        await run_until(worker, lambda: bool(receiver.of_type("event-notification")))
        took = asyncio.get_running_loop().time() - created_at
        assert focuses(receiver.of_type("event-notification")[0]) == [f"Task/{t['id']}"]
        assert took < 6.0, took  # not behind the receiver that hangs 8 s
        status = (await net.b.get("/fhir/Subscription/$status")).json()
        by_id = {
            e["resource"]["parameter"][0]["valueReference"]["reference"].rsplit("/", 1)[1]: {
                p["name"]: p for p in e["resource"]["parameter"]
            }
            for e in status["entry"]
        }
        assert by_id[healthy["id"]]["status"]["valueCode"] == "active"
        slow_one = next(v for k, v in by_id.items() if k != healthy["id"])
        assert slow_one["status"]["valueCode"] == "error"  # its handshake timed out
        assert "within 1 s" in slow_one["error"]["valueCodeableConcept"]["text"]
        await worker.close()
    finally:
        slow.stop()


async def test_release_imminent_fires_once_for_an_unaccepted_referral(
    net: Network, receiver: Receiver, worker: Worker
) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0).isoformat()
    later = (datetime.now(UTC) + timedelta(days=5)).replace(microsecond=0).isoformat()
    made = []
    for when in (soon, later):
        r = await net.a.post("/v1/referrals", json=jms_referral(net.org_b, release_at=when))
        assert r.status_code == 201, r.text
        made.append(r.json())
    await subscribe(
        net.a,
        subscription(
            receiver.url,
            topic="https://handoff.dev/fhir/SubscriptionTopic/release-imminent",
            filters=[f"Task?requester={net.org_a}&hours=24"],
        ),
    )
    await worker.drain()
    await worker.drain()  # a second scan does not fire it again
    events = receiver.of_type("event-notification")
    assert [f for b in events for f in focuses(b)] == [f"Task/{made[0]['task_id']}"]
    r = await net.a.post(
        "/fhir/Subscription",
        json=subscription(
            receiver.url,
            topic="https://handoff.dev/fhir/SubscriptionTopic/release-imminent",
            filters=[f"Task?requester={net.org_a}"],
        ),
        headers=FHIR_JSON,
    )
    assert r.status_code == 422 and "needs the filter 'hours'" in r.text
