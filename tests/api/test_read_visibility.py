"""Read by id answers 404 for what a client may not see, exactly as for what does not exist."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from tests.builders import FHIR_JSON, task

OrgClient = Callable[..., Awaitable[httpx.AsyncClient]]


async def test_task_is_read_by_its_parties_and_hidden_from_others(
    client: httpx.AsyncClient, org_client: OrgClient
) -> None:
    jail = await org_client("Organization/jail-1")
    provider = await org_client("Organization/prov-1")
    stranger = await org_client("Organization/other-9")
    created = await jail.post(
        "/fhir/Task",
        json=task(owner="Organization/prov-1", requester="Organization/jail-1"),
        headers=FHIR_JSON,
    )
    assert created.status_code == 201, created.text
    path = f"/fhir/Task/{created.json()['id']}"

    for reader in (jail, provider, client):
        r = await reader.get(path)
        assert r.status_code == 200, r.text
        assert r.json() == created.json()
        assert r.headers["ETag"] == 'W/"1"'

    hidden = await stranger.get(path)
    unknown = await stranger.get("/fhir/Task/no-such-task")
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["issue"][0]["code"] == "not-found"
    assert path.removeprefix("/fhir/") in hidden.json()["issue"][0]["diagnostics"]


async def test_open_unowned_task_is_visible_to_any_organization(org_client: OrgClient) -> None:
    jail = await org_client("Organization/jail-1")
    stranger = await org_client("Organization/other-9")
    created = await jail.post(
        "/fhir/Task",
        json=task(owner=None, requester="Organization/jail-1", status="requested"),
        headers=FHIR_JSON,
    )
    assert created.status_code == 201, created.text
    r = await stranger.get(f"/fhir/Task/{created.json()['id']}")
    assert r.status_code == 200
    assert r.json()["id"] == created.json()["id"]


async def test_deleted_task_is_gone_for_its_parties_and_unknown_to_others(
    org_client: OrgClient,
) -> None:
    jail = await org_client("Organization/jail-1")
    provider = await org_client("Organization/prov-1")
    stranger = await org_client("Organization/other-9")
    created = await jail.post(
        "/fhir/Task",
        json=task(owner="Organization/prov-1", requester="Organization/jail-1"),
        headers=FHIR_JSON,
    )
    path = f"/fhir/Task/{created.json()['id']}"
    assert (await jail.delete(path)).status_code == 200

    gone = await provider.get(path)
    assert gone.status_code == 410
    assert gone.headers["ETag"] == 'W/"2"'
    assert (await stranger.get(path)).status_code == 404


async def test_read_needs_a_read_scope(org_client: OrgClient) -> None:
    jail = await org_client("Organization/jail-1")
    created = await jail.post(
        "/fhir/Task", json=task(requester="Organization/jail-1"), headers=FHIR_JSON
    )
    search_only = await org_client("Organization/jail-1", scopes="system/Task.s")
    r = await search_only.get(f"/fhir/Task/{created.json()['id']}")
    assert r.status_code == 403
