"""Organization tenancy and SMART scope constraints, as three organizations' clients see them.

Jail A refers a patient to provider B; provider C is a bystander. What C may not see must look
exactly like what does not exist (404, never 403), in reads, searches, includes, histories,
conditional creates and Bundles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.builders import FHIR_JSON, organization, patient, task

OrgClient = Callable[..., Awaitable[httpx.AsyncClient]]


@dataclass
class Network:
    admin: httpx.AsyncClient
    a: httpx.AsyncClient  # the jail
    b: httpx.AsyncClient  # the provider the referral is for
    c: httpx.AsyncClient  # another provider
    org_a: str
    org_b: str
    org_c: str


@dataclass
class Referral:
    patient: dict[str, Any]
    service_request: dict[str, Any]
    task: dict[str, Any]

    def refs(self) -> list[str]:
        return [
            f"Patient/{self.patient['id']}",
            f"ServiceRequest/{self.service_request['id']}",
            f"Task/{self.task['id']}",
        ]


async def created(c: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await c.post(f"/fhir/{body['resourceType']}", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def search_ids(c: httpx.AsyncClient, path: str, params: Any = None) -> set[str]:
    r = await c.get(f"/fhir/{path}", params=params)
    assert r.status_code == 200, r.text
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json().get("entry", [])
    }


async def settled_ids(
    c: httpx.AsyncClient, path: str, expected: set[str], params: Any = None
) -> set[str]:
    """``search_ids`` for history and cursor feeds, which on PostgreSQL show a commit only once
    every older transaction in the cluster has finished: poll until ``expected`` or 30 s pass."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        # The caller's own AuditEvents (every request is audited) are not what is compared.
        found = {i for i in await search_ids(c, path, params) if not i.startswith("AuditEvent/")}
        if found == expected or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


def service_request(*, requester: str, performer: str, patient_ref: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": patient_ref},
        "requester": {"reference": requester},
        "performer": [{"reference": performer}],
    }


def assert_not_available(r: httpx.Response) -> None:
    """A PUT to an id the caller may not see: not created (the id is taken), not updated, and
    nothing said of what holds it."""
    assert r.status_code == 409, r.text
    diagnostics = r.json()["issue"][0]["diagnostics"]
    assert "not available to your organization" in diagnostics
    assert "WWW-Authenticate" not in r.headers


def assert_not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "not-found"
    assert "WWW-Authenticate" not in r.headers


@pytest.fixture
async def net(client: httpx.AsyncClient, org_client: OrgClient) -> Network:
    orgs = []
    for name in ("Riverbend Jail", "Harbor OTP", "Northside Recovery"):
        org = await created(client, organization(name=name, identifier=name))
        orgs.append(f"Organization/{org['id']}")
    a, b, c = [await org_client(org) for org in orgs]
    return Network(client, a, b, c, *orgs)


@pytest.fixture
async def referral(net: Network) -> Referral:
    p = await created(net.a, patient())
    sr = await created(
        net.a,
        service_request(requester=net.org_a, performer=net.org_b, patient_ref=f"Patient/{p['id']}"),
    )
    t = await created(
        net.a,
        task(
            requester=net.org_a,
            owner=net.org_b,
            patient_ref=f"Patient/{p['id']}",
            focus=f"ServiceRequest/{sr['id']}",
        ),
    )
    return Referral(p, sr, t)


# --- the owner and the requester see the referral ---------------------------------------------


async def test_owner_sees_the_referral(net: Network, referral: Referral) -> None:
    for ref in referral.refs():
        assert (await net.b.get(f"/fhir/{ref}")).status_code == 200, ref
        assert (await net.b.get(f"/fhir/{ref}/_history/1")).status_code == 200, ref
        assert (await net.b.get(f"/fhir/{ref}/_history")).status_code == 200, ref
    tid, sid, pid = referral.task["id"], referral.service_request["id"], referral.patient["id"]
    assert await search_ids(net.b, "Task") == {f"Task/{tid}"}
    assert await search_ids(net.b, "ServiceRequest") == {f"ServiceRequest/{sid}"}
    assert await search_ids(net.b, "Patient") == {f"Patient/{pid}"}
    included = await search_ids(
        net.b, "Task", [("_id", tid), ("_include", "Task:patient"), ("_include", "Task:focus")]
    )
    assert included == set(referral.refs())
    rev = await search_ids(net.b, "ServiceRequest", {"_id": sid, "_revinclude": "Task:focus"})
    assert rev == {f"ServiceRequest/{sid}", f"Task/{tid}"}
    rev = await search_ids(net.b, "Patient", {"_id": pid, "_revinclude": "Task:patient"})
    assert rev == {f"Patient/{pid}", f"Task/{tid}"}
    # The jail, as creator and requester, sees them too.
    assert await search_ids(net.a, "Task") == {f"Task/{tid}"}


async def test_owner_may_update_the_task_and_requester_sees_it(
    net: Network, referral: Referral
) -> None:
    tid = referral.task["id"]
    accepted = dict(referral.task, status="accepted")
    r = await net.b.put(
        f"/fhir/Task/{tid}", json=accepted, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert r.status_code == 200, r.text
    assert (await net.a.get(f"/fhir/Task/{tid}")).json()["status"] == "accepted"
    assert_not_found(await net.c.get(f"/fhir/Task/{tid}"))


# --- a bystander sees nothing ------------------------------------------------------------------


async def test_bystander_reads_are_404_like_unknown_ids(net: Network, referral: Referral) -> None:
    for ref in referral.refs():
        rtype = ref.split("/")[0]
        for path in (ref, f"{ref}/_history/1", f"{ref}/_history"):
            r = await net.c.get(f"/fhir/{path}")
            assert_not_found(r)
            unknown = await net.c.get(f"/fhir/{path.replace(ref, f'{rtype}/no-such-id')}")
            assert r.status_code == unknown.status_code
            assert r.json()["issue"][0]["code"] == unknown.json()["issue"][0]["code"]


async def test_bystander_searches_and_histories_leave_them_out(
    net: Network, referral: Referral
) -> None:
    own = await created(
        net.c, task(requester=net.org_c, owner=net.org_c, patient_ref="Patient/elsewhere")
    )
    for rtype in ("Task", "ServiceRequest", "Patient"):
        expected = {f"Task/{own['id']}"} if rtype == "Task" else set()
        assert await search_ids(net.c, rtype) == expected
        assert await settled_ids(net.c, f"{rtype}/_history", expected) == expected
    # System history: C's Task and the directory (readable by everyone), nothing of A's.
    everything = {f"Task/{own['id']}", net.org_a, net.org_b, net.org_c}
    assert await settled_ids(net.c, "_history", everything) == everything
    feed = await settled_ids(net.c, "Task", {f"Task/{own['id']}"}, {"_cursor": "start"})
    assert feed == {f"Task/{own['id']}"}
    by_identifier = await search_ids(
        net.c, "Patient", {"identifier": "https://jail.example.org/booking|B-1"}
    )
    assert by_identifier == set()
    # The jail's search for its own data is unaffected by C's.
    assert f"Task/{own['id']}" not in await search_ids(net.a, "Task")


async def test_bystander_includes_leave_them_out(net: Network, referral: Referral) -> None:
    """C's own resources may point at A's; following the pointer yields nothing."""
    obs = await created(
        net.c,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "note"},
            "subject": {"reference": f"Patient/{referral.patient['id']}"},
        },
    )
    own = await created(
        net.c,
        dict(
            task(requester=net.org_c, owner=net.org_c, patient_ref="Patient/elsewhere"),
            partOf=[{"reference": f"Task/{referral.task['id']}"}],
            basedOn=[{"reference": f"ServiceRequest/{referral.service_request['id']}"}],
        ),
    )
    found = await search_ids(
        net.c, "Observation", {"_id": obs["id"], "_include": "Observation:patient"}
    )
    assert found == {f"Observation/{obs['id']}"}
    found = await search_ids(
        net.c,
        "Task",
        [("_id", own["id"]), ("_include", "Task:part-of"), ("_include", "Task:based-on")],
    )
    assert found == {f"Task/{own['id']}"}
    rev = await search_ids(net.c, "Task", {"_id": own["id"], "_revinclude": "Task:part-of"})
    assert rev == {f"Task/{own['id']}"}


async def test_bystander_cannot_gain_access_by_pointing_a_task_at_them(
    net: Network, referral: Referral
) -> None:
    """A Task links its owner and requester to its patient and focus: only to ones they see."""
    grab = task(
        requester=net.org_c,
        owner=net.org_c,
        patient_ref=f"Patient/{referral.patient['id']}",
        focus=f"ServiceRequest/{referral.service_request['id']}",
    )
    r = await net.c.post("/fhir/Task", json=grab, headers=FHIR_JSON)
    assert r.status_code == 422, r.text
    # Named as unknown, as a read of it would be: its existence is not disclosed either.
    issue = r.json()["issue"][0]
    assert issue["diagnostics"].endswith("which is not known to this server")
    assert any(f"refers to {ref}," in issue["diagnostics"] for ref in referral.refs())
    for ref in referral.refs():
        assert_not_found(await net.c.get(f"/fhir/{ref}"))
    # The owner, who sees the patient, may refer onwards.
    onward = task(
        requester=net.org_b,
        owner=net.org_c,
        patient_ref=f"Patient/{referral.patient['id']}",
        focus=f"ServiceRequest/{referral.service_request['id']}",
    )
    r = await net.b.post("/fhir/Task", json=onward, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    assert (await net.c.get(f"/fhir/Patient/{referral.patient['id']}")).status_code == 200


async def test_bystander_conditional_create_does_not_match_theirs(
    net: Network, referral: Referral
) -> None:
    condition = "identifier=https://jail.example.org/booking|B-1"
    r = await net.c.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "If-None-Exist": condition}
    )
    assert r.status_code == 201, r.text
    assert r.json()["id"] != referral.patient["id"]
    again = await net.a.post(
        "/fhir/Patient", json=patient(), headers={**FHIR_JSON, "If-None-Exist": condition}
    )
    assert again.status_code == 200 and again.json()["id"] == referral.patient["id"]


async def test_bystander_writes_are_404(net: Network, referral: Referral) -> None:
    tid = referral.task["id"]
    r = await net.c.put(
        f"/fhir/Task/{tid}",
        json=dict(referral.task, status="rejected"),
        headers={**FHIR_JSON, "If-Match": 'W/"1"'},
    )
    assert_not_available(r)
    patch = [{"op": "replace", "path": "/status", "value": "rejected"}]
    r = await net.c.patch(
        f"/fhir/Task/{tid}", json=patch, headers={"Content-Type": "application/json-patch+json"}
    )
    assert_not_found(r)
    assert_not_found(await net.c.delete(f"/fhir/Patient/{referral.patient['id']}"))
    assert (await net.admin.get(f"/fhir/Task/{tid}")).json()["meta"]["versionId"] == "1"


async def test_bystander_bundles_fail_on_their_entries(net: Network, referral: Referral) -> None:
    tid = referral.task["id"]
    for entry in (
        {"request": {"method": "GET", "url": f"Task/{tid}"}},
        {
            "request": {"method": "PUT", "url": f"Task/{tid}", "ifMatch": 'W/"1"'},
            "resource": dict(referral.task, status="rejected"),
        },
    ):
        own = {"request": {"method": "POST", "url": "Patient"}, "resource": patient(booking="C-1")}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [own, entry]}
        r = await net.c.post("/fhir", json=bundle, headers=FHIR_JSON)
        if entry["request"]["method"] == "PUT":
            assert_not_available(r)
        else:
            assert_not_found(r)
        assert "Bundle.entry[1]" in r.json()["issue"][0]["expression"]
        batch = dict(bundle, type="batch")
        r = await net.c.post("/fhir", json=batch, headers=FHIR_JSON)
        assert r.status_code == 200
        statuses = [e["response"]["status"] for e in r.json()["entry"]]
        refused = "409" if entry["request"]["method"] == "PUT" else "404"
        assert statuses[0].startswith("201") and statuses[1].startswith(refused)
    # The transactions created nothing; the batches created C's patients only.
    assert (await net.admin.get(f"/fhir/Task/{tid}")).json()["status"] == "requested"
    assert len(await search_ids(net.c, "Patient")) == 2


# --- open Tasks, directory data, requester rule --------------------------------------------------


async def test_unowned_requested_task_is_visible_to_any_org_until_claimed(net: Network) -> None:
    open_task = await created(net.a, task(requester=net.org_a, owner=None))
    tid = open_task["id"]
    for c in (net.b, net.c):
        assert (await c.get(f"/fhir/Task/{tid}")).status_code == 200
        assert f"Task/{tid}" in await search_ids(c, "Task", {"status": "requested"})
    claimed = dict(open_task, status="accepted", owner={"reference": net.org_b})
    r = await net.b.put(
        f"/fhir/Task/{tid}", json=claimed, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert r.status_code == 200, r.text
    assert_not_found(await net.c.get(f"/fhir/Task/{tid}"))
    assert (await net.b.get(f"/fhir/Task/{tid}")).status_code == 200


async def test_directory_is_readable_by_all_and_written_by_admins(net: Network) -> None:
    org_id = net.org_b.split("/")[1]
    for c in (net.a, net.b, net.c):
        assert (await c.get(f"/fhir/Organization/{org_id}")).status_code == 200
        assert len(await search_ids(c, "Organization")) == 3
    r = await net.b.post("/fhir/Organization", json=organization(identifier="x"), headers=FHIR_JSON)
    assert r.status_code == 403, r.text
    assert r.json()["issue"][0]["code"] == "forbidden"
    current = (await net.b.get(f"/fhir/Organization/{org_id}")).json()
    for c in (net.b, net.c):
        r = await c.put(
            f"/fhir/Organization/{org_id}", json=dict(current, name="Renamed"), headers=FHIR_JSON
        )
        assert r.status_code == 403, r.text
        assert (await c.delete(f"/fhir/Organization/{org_id}")).status_code == 403
    service = {"resourceType": "HealthcareService", "providedBy": {"reference": net.org_b}}
    assert (
        await net.b.post("/fhir/HealthcareService", json=service, headers=FHIR_JSON)
    ).status_code == 403
    r = await net.admin.put(
        f"/fhir/Organization/{org_id}", json=dict(current, name="Renamed"), headers=FHIR_JSON
    )
    assert r.status_code == 200, r.text


async def test_task_requester_must_be_the_callers_organization(net: Network) -> None:
    forged = task(requester=net.org_a, owner=net.org_c)
    r = await net.c.post("/fhir/Task", json=forged, headers=FHIR_JSON)
    assert r.status_code == 403, r.text
    assert "requester" in r.json()["issue"][0]["diagnostics"]
    # Not through an update that creates (upsert) either, nor a transaction.
    r = await net.c.put("/fhir/Task/forged-1", json=dict(forged, id="forged-1"), headers=FHIR_JSON)
    assert r.status_code == 403, r.text
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "POST", "url": "Task"}, "resource": forged}],
    }
    assert (await net.c.post("/fhir", json=bundle, headers=FHIR_JSON)).status_code == 403
    sr = service_request(requester=net.org_a, performer=net.org_c, patient_ref="Patient/x")
    assert (await net.c.post("/fhir/ServiceRequest", json=sr, headers=FHIR_JSON)).status_code == 403
    assert await search_ids(net.admin, "Task") == set()
    own = await created(net.c, task(requester=net.org_c, owner=net.org_a))
    assert (await net.a.get(f"/fhir/Task/{own['id']}")).status_code == 200


# --- scope constraints, v1 scopes, openid -------------------------------------------------------


async def test_constrained_read_scope(net: Network, org_client: OrgClient) -> None:
    org_d = "Organization/d-1"
    to_b = await created(net.a, task(requester=net.org_a, owner=net.org_b))
    to_d = await created(net.a, task(requester=net.org_a, owner=org_d))
    narrow = await org_client(net.org_a, f"system/Task.rs?owner={net.org_b}")
    assert await search_ids(narrow, "Task") == {f"Task/{to_b['id']}"}
    assert await search_ids(narrow, "Task", {"owner": org_d}) == set()
    assert await settled_ids(narrow, "Task/_history", {f"Task/{to_b['id']}"}) == {
        f"Task/{to_b['id']}"
    }
    assert (await narrow.get(f"/fhir/Task/{to_b['id']}")).status_code == 200
    assert_not_found(await narrow.get(f"/fhir/Task/{to_d['id']}"))
    assert_not_found(await narrow.get(f"/fhir/Task/{to_d['id']}/_history/1"))
    # The constraint does not widen tenancy: B's unrelated Tasks stay invisible to A.
    b_own = await created(net.b, task(requester=net.org_b, owner=net.org_b))
    assert_not_found(await narrow.get(f"/fhir/Task/{b_own['id']}"))


async def test_constrained_write_scope(net: Network, org_client: OrgClient) -> None:
    writer = await org_client(net.org_a, f"system/Task.cru?owner={net.org_b}")
    ok = await writer.post(
        "/fhir/Task", json=task(requester=net.org_a, owner=net.org_b), headers=FHIR_JSON
    )
    assert ok.status_code == 201, ok.text
    outside = await writer.post(
        "/fhir/Task", json=task(requester=net.org_a, owner=net.org_c), headers=FHIR_JSON
    )
    assert outside.status_code == 403, outside.text
    assert 'error="insufficient_scope"' in outside.headers["WWW-Authenticate"]
    moved = dict(ok.json(), owner={"reference": net.org_c})
    r = await writer.put(
        f"/fhir/Task/{moved['id']}", json=moved, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert r.status_code == 403, r.text
    assert (await net.admin.get(f"/fhir/Task/{moved['id']}")).json()["owner"] == {
        "reference": net.org_b
    }


async def test_v1_scopes_map_to_v2(net: Network, org_client: OrgClient, referral: Referral) -> None:
    reader = await org_client(net.org_b, "system/*.read")
    assert (await reader.get(f"/fhir/Task/{referral.task['id']}")).status_code == 200
    assert await search_ids(reader, "Task") == {f"Task/{referral.task['id']}"}
    r = await reader.post("/fhir/Task", json=task(requester=net.org_b), headers=FHIR_JSON)
    assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    writer = await org_client(net.org_b, "system/Task.write")
    r = await writer.post("/fhir/Task", json=task(requester=net.org_b), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    assert (await writer.get(f"/fhir/Task/{r.json()['id']}")).status_code == 403


async def test_openid_alone_grants_nothing(net: Network, org_client: OrgClient) -> None:
    openid = await org_client(net.org_b, "openid fhirUser")
    for path in ("Task", "Organization", f"Organization/{net.org_b.split('/')[1]}", "_history"):
        r = await openid.get(f"/fhir/{path}")
        assert r.status_code == 403, (path, r.text)
        assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
