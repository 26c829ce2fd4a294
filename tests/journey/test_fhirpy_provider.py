"""The warm handoff through a running server, the provider driven by a real FHIR client
(fhirpy), the jail by plain HTTP: refer, poll with the cursor, accept, milestones, complete."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirpy import AsyncFHIRClient
from sqlalchemy.engine import make_url

from tests.builders import jms_person, jms_referral
from tests.cli.test_serve import free_port, start, wait_ready
from tests.conftest import DEFAULT_PG, _pg_admin

DEMO = "https://handoff.dev/fhir/demo"
SERVER_LOG = "server.log"  # in the test's tmp_path


SAM = jms_person(
    "P-42", family="Okafor", given="Sam", birth_date="1990-05-01", sex="male", booking_number=None
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    env = {"HANDOFF_LOG_LEVEL": "WARNING"}
    dropped = None
    if request.param == "sqlite":
        env["HANDOFF_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'journey.db'}"
    else:
        base = os.environ.get("HANDOFF_TEST_POSTGRES_URL", DEFAULT_PG)
        name = f"handoff_journey_{uuid.uuid4().hex[:8]}"
        try:
            asyncio.run(_pg_admin(base, f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL unreachable under CI: {exc}")
            pytest.skip(f"PostgreSQL unreachable: {exc}")
        env["HANDOFF_DATABASE_URL"] = make_url(base).set(database=name).render_as_string(False)
        env["HANDOFF_AUTO_MIGRATE"] = "true"
        dropped = (base, name)
    port = free_port()
    proc = start(["serve", "--demo", "--port", str(port)], env, tmp_path, log=tmp_path / SERVER_LOG)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if dropped:
            asyncio.run(
                _pg_admin(dropped[0], f'DROP DATABASE IF EXISTS "{dropped[1]}" WITH (FORCE)')
            )


async def token(http: httpx.AsyncClient, client_id: str) -> str:
    r = await http.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, f"{client_id}-secret"),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def org_id(fhir: AsyncFHIRClient, key: str) -> str:
    org = await fhir.resources("Organization").search(identifier=f"{DEMO}|{key}").get()
    return f"Organization/{org.id}"


async def save_with_if_match(base: str, auth: str, task: Any) -> Any:
    """fhirpy has no If-Match option: a client with the header for this one update."""
    version = task["meta"]["versionId"]
    pinned = AsyncFHIRClient(
        f"{base}/fhir", authorization=auth, extra_headers={"If-Match": f'W/"{version}"'}
    )
    resource = pinned.resource("Task", **{k: v for k, v in task.items() if k != "resourceType"})
    await resource.save()
    return resource


async def test_warm_handoff_with_fhirpy(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        jail_auth = f"Bearer {await token(http, 'demo-jail')}"
        otp_auth = f"Bearer {await token(http, 'demo-otp')}"
        provider = AsyncFHIRClient(f"{server}/fhir", authorization=otp_auth)
        otp = await org_id(provider, "otp")
        release = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0).isoformat()
        r = await http.post(
            "/v1/referrals",
            headers={"Authorization": jail_auth, "Idempotency-Key": "journey-1"},
            json=jms_referral(
                otp,
                referral_id="J-1",
                person=SAM,
                release={"expected_at": release, "location": "Main gate"},
                contact_directly=False,
            ),
        )
        assert r.status_code == 201, r.text
        referral = r.json()
        consent = await http.post(
            "/v1/consents",
            headers={"Authorization": jail_auth},
            json={
                "person": SAM,
                "signed_at": datetime.now(UTC).isoformat(),
                "signed_by": "Sam Okafor (self)",
                "recipients": [otp],
            },
        )
        assert consent.status_code == 201, consent.text

        # The provider polls with the cursor (never with a clock). On PostgreSQL a change shows
        # once every older transaction has ended (the fence): a poller simply polls again.
        for _ in range(100):
            bundle = await provider.execute(
                "Task",
                method="get",
                params={"owner": otp, "status": "requested", "_cursor": "start"},
            )
            tasks = [
                e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"
            ]
            if tasks:
                break
            await asyncio.sleep(0.1)
        assert [t["id"] for t in tasks] == [referral["task_id"]]
        # fhirpy's count() asks _count=0 and reads Bundle.total.
        assert await provider.resources("Task").search(owner=otp).count() == 1
        cursor = next(x["url"] for x in bundle["link"] if x["relation"] == "cursor")

        # fhirpy searches with includes and follows pages like any FHIR client.
        found = (
            await provider.resources("Task").search(owner=otp).include("Task", "focus").fetch_all()
        )
        assert {res["resourceType"] for res in found} >= {"Task"}
        sr = await provider.resources("ServiceRequest").search(_id=referral["referral_id"]).get()
        assert sr["orderDetail"][-1]["coding"][0]["code"] == "contacting-subject-prohibited"

        task = await provider.resources("Task").search(_id=referral["task_id"]).get()
        task["status"] = "accepted"
        task = await save_with_if_match(server, otp_auth, task)
        task["status"] = "in-progress"
        task["businessStatus"] = {
            "coding": [
                {
                    "system": "https://handoff.dev/fhir/CodeSystem/warm-handoff-status",
                    "code": "met-at-release",
                }
            ]
        }
        task = await save_with_if_match(server, otp_auth, task)
        task["status"] = "completed"
        task["output"] = [
            {
                "type": {"text": "activity"},
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": "https://handoff.dev/fhir/CodeSystem/handoff-activity",
                            "code": "met-at-release",
                        }
                    ]
                },
            }
        ]
        task = await save_with_if_match(server, otp_auth, task)
        assert task["meta"]["versionId"] == "4"

        # A stale If-Match is refused (fhirpy maps 412 to MultipleResourcesFound).
        stale = dict(task, status="failed")
        stale["meta"] = dict(task["meta"], versionId="1")
        with pytest.raises(Exception):  # noqa: B017 - fhirpy's own exception type for 412
            await save_with_if_match(server, otp_auth, stale)

        # Polling the cursor again shows the Task left "requested" (the version that stopped
        # matching, flagged); later versions no longer concern a status=requested poll.
        changed: list[dict[str, Any]] = []
        for _ in range(100):
            after = (await http.get(cursor, headers={"Authorization": otp_auth})).json()
            changed = [e for e in after.get("entry", []) if e["search"]["mode"] == "match"]
            if changed:
                break
            await asyncio.sleep(0.1)
        assert [e["resource"]["status"] for e in changed] == ["accepted"]
        assert changed[0]["search"]["extension"][0]["valueBoolean"] is True

        # The provider's progress is its own Part 2 record: the jail sees it under a consent
        # the provider holds, naming the jail (recorded through FHIR, with fhirpy).
        jail = await org_id(provider, "county-jail")
        ircp = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
        await provider.resource(
            "Consent",
            status="active",
            scope={"coding": [{"code": "patient-privacy"}]},
            category=[{"coding": [{"system": "http://loinc.org", "code": "64292-6"}]}],
            patient={"reference": f"Patient/{referral['patient_id']}"},
            organization=[{"reference": otp}],
            provision={
                "type": "permit",
                "actor": [
                    {
                        "role": {"coding": [{"system": ircp, "code": "IRCP"}]},
                        "reference": {"reference": jail},
                    }
                ],
            },
        ).save()
        view = (
            await http.get(
                f"/v1/referrals/{referral['referral_id']}", headers={"Authorization": jail_auth}
            )
        ).json()
        assert view["status"] == "completed"
        assert [e["status"] for e in view["timeline"]] == [
            "requested",
            "accepted",
            "in-progress",
            "completed",
        ]
