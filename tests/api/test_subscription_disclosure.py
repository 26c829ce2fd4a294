"""Full-resource notifications pass the subscriber's 42 CFR Part 2 view at send time, and each
one that discloses a record writes its AuditEvent."""

from __future__ import annotations

from typing import Any

import pytest

from service.features.subscriptions.worker import Worker
from service.settings import Settings
from tests.api.test_disclosure_paths import accept, put, read, redacted
from tests.api.test_disclosure_paths import net as net  # the fixture
from tests.api.test_subscriptions import receiver as receiver  # the fixture
from tests.api.test_subscriptions import worker as worker  # the fixture
from tests.builders import FHIR_JSON, fhir_consent, subscription
from tests.receivers import Receiver, focuses

pytestmark = pytest.mark.usefixtures("instruments")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database_url=database_url,
        public_base_url=None,
        gc_gen0_threshold=0,
        max_concurrent_per_client=1000,
        subscription_allow_local_http=True,
        subscription_poll_seconds=0.05,
        _env_file=None,
    )


def _resources(receiver: Receiver) -> list[dict[str, Any]]:
    return [e["resource"] for b in receiver.bundles() for e in b["entry"][1:] if "resource" in e]


async def test_consent_revoked_between_write_and_send(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    otp, jail, ids, admin = net["otp"], net["jail"], net["ids"], net["admin"]
    task_id = net["ref"]["task_id"]
    patient = f"Patient/{net['ref']['patient_id']}"
    body = subscription(receiver.url, filters=[f"Task?owner={ids['otp']}"], content="full-resource")
    r = await otp.post("/fhir/Subscription", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    await worker.drain()
    given = await fhir_consent(jail, patient, custodian=ids["jail"], recipients=[ids["otp"]])
    await accept(net)  # a change while the consent holds
    await worker.drain()
    [shown] = _resources(receiver)
    assert shown["id"] == task_id and not redacted(shown)
    assert shown == await read(otp, f"Task/{task_id}")  # exactly what the provider may read
    # Changed, then the consent is revoked before the worker sends.
    task = await read(otp, f"Task/{task_id}")
    assert (await put(otp, task, businessStatus={"text": "SCHEDULED"})).status_code == 200
    r = await jail.post(f"/v1/consents/{given['id']}/revoke", json={"reason": "withdrawn"})
    assert r.status_code == 200, r.text
    await worker.drain()
    _first, second = _resources(receiver)
    assert redacted(second), second
    assert second == await read(otp, f"Task/{task_id}")  # the view after revocation
    assert [f for b in receiver.bundles() for f in focuses(b)] == [f"Task/{task_id}"] * 2
    # Each notification that disclosed the Task has its AuditEvent, naming the subscriber.
    audits = await admin.get(
        "/fhir/AuditEvent", params={"entity": f"Task/{task_id}", "_count": "200"}
    )
    sent = [
        e["resource"]
        for e in audits.json().get("entry", [])
        if any(
            ent.get("what", {}).get("identifier", {}).get("value", "").startswith("notification-")
            for ent in e["resource"]["entity"]
        )
    ]
    assert len(sent) == 2, audits.text
    assert all(
        any(a.get("who", {}).get("reference") == ids["otp"] for a in e["agent"]) for e in sent
    )


async def test_a_bystander_organization_hears_nothing(
    net: dict[str, Any], receiver: Receiver, worker: Worker
) -> None:
    ssp, ids = net["ssp"], net["ids"]
    body = subscription(receiver.url, filters=["Task?status=accepted"], content="full-resource")
    r = await ssp.post("/fhir/Subscription", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    await worker.drain()
    await accept(net)
    await worker.drain()
    assert receiver.of_type("event-notification") == []
    assert ids["ssp"] not in str(_resources(receiver))
