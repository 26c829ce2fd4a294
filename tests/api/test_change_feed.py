"""The polling feed (`_cursor`): every committed version exactly once, in commit order, even
when transactions commit out of the order in which they started writing."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from service.storage.db import write_transaction
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext
from tests.builders import FHIR_JSON, task


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)


async def drain(client: httpx.AsyncClient, url: str) -> tuple[list[dict[str, Any]], str]:
    """Follow next links to the end; return entries and the cursor link to poll next time."""
    entries: list[dict[str, Any]] = []
    while True:
        page = (await client.get(url)).json()
        entries += [e for e in page.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = link(page, "next")
        cursor = link(page, "cursor")
        assert cursor is not None
        if not nxt:
            return entries, cursor
        url = nxt


async def drain_until(
    client: httpx.AsyncClient, url: str, count: int, patience: float = 15.0
) -> tuple[list[dict[str, Any]], str]:
    """Poll (following cursor links) until ``count`` entries arrived. On PostgreSQL a change
    becomes visible once every older transaction has finished (the fence), and background work
    such as autovacuum's ANALYZE can hold that back for a moment: a poller just polls again."""
    got: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        entries, url = await drain(client, url)
        got += entries
        if len(got) >= count or asyncio.get_running_loop().time() > deadline:
            return got, url
        await asyncio.sleep(0.05)


async def test_cursor_feed_shows_changes_including_leaving_the_search(
    client: httpx.AsyncClient,
) -> None:
    params = "owner=Organization/prov-1&status=requested"
    created = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    first, cursor = await drain_until(client, f"/fhir/Task?{params}&_cursor=start", 1)
    assert [e["resource"]["id"] for e in first] == [created["id"]]
    # Caught up: nothing new.
    again, cursor2 = await drain(client, cursor)
    assert again == []
    # The Task is accepted: it no longer matches status=requested, and the poller learns it.
    accepted = dict(created, status="accepted")
    await client.put(
        f"/fhir/Task/{created['id']}", json=accepted, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
    )
    other = await client.post(
        "/fhir/Task", json=task(owner="Organization/someone-else"), headers=FHIR_JSON
    )
    assert other.status_code == 201
    changed, cursor3 = await drain_until(client, cursor2, 1)
    more, _ = await drain(client, cursor3)
    assert len(changed + more) == 1
    entry = changed[0]
    assert entry["resource"]["status"] == "accepted"
    assert entry["search"]["extension"][0]["valueBoolean"] is True  # no longer matches


async def test_cursor_feed_pages_in_commit_order(client: httpx.AsyncClient) -> None:
    made = []
    for _ in range(7):
        made.append((await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()["id"])
    seen, _ = await drain_until(
        client, "/fhir/Task?owner=Organization/prov-1&_cursor=start&_count=3", 7
    )
    assert [e["resource"]["id"] for e in seen] == made


async def test_deletion_is_reported_in_feed(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    _, cursor = await drain_until(client, "/fhir/Task?owner=Organization/prov-1&_cursor=start", 1)
    await client.delete(f"/fhir/Task/{created['id']}")
    outcomes: list[dict[str, Any]] = []
    for _ in range(100):
        page = (await client.get(cursor)).json()
        outcomes = [e for e in page.get("entry", []) if e["search"]["mode"] == "outcome"]
        if outcomes:
            break
        await asyncio.sleep(0.05)
    assert outcomes
    assert f"Task/{created['id']}" in str(outcomes[0]["resource"])


async def test_out_of_order_commits_are_never_missed(app, client: httpx.AsyncClient) -> None:
    """A writer holds its transaction open while others commit; the poller, following its
    cursor the whole time, sees every version exactly once."""
    ctx = WorkflowContext(
        engine=app.state.engine,
        settings=app.state.settings,
        base_url="http://testserver/fhir",
        request_id="test",
        rules=app.state.rules,
    )
    sqlite = app.state.engine.dialect.name == "sqlite"
    release = asyncio.Event()
    holder_wrote = asyncio.Event()
    expected: set[tuple[str, str]] = set()

    async def slow_writer() -> None:
        async with write_transaction(ctx.engine) as conn:
            result = await wf.create_in(conn, ctx, task())
            expected.add((result.stored.id, "1"))
            holder_wrote.set()
            await release.wait()

    async def fast_writer(n: int) -> None:
        for _ in range(n):
            r = await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)
            body = r.json()
            expected.add((body["id"], "1"))
            upd = await client.put(
                f"/fhir/Task/{body['id']}",
                json=dict(body, businessStatus={"text": "contacted"}),
                headers={**FHIR_JSON, "If-Match": 'W/"1"'},
            )
            expected.add((body["id"], upd.json()["meta"]["versionId"]))

    seen: list[tuple[str, str]] = []
    # A poller past its first pass (nothing written yet): from here, every version.
    _, cursor = await drain(client, "/fhir/Task?owner=Organization/prov-1&_cursor=start&_count=5")

    async def poll_once() -> None:
        nonlocal cursor
        entries, cursor = await drain(client, cursor)
        seen.extend((e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in entries)

    if sqlite:
        # One writer at a time on SQLite: commits cannot reorder; interleave writers and polls.
        writers = asyncio.gather(fast_writer(10), fast_writer(10))
        while not writers.done():
            await poll_once()
            await asyncio.sleep(0)
        await writers
    else:
        holder = asyncio.create_task(slow_writer())
        await holder_wrote.wait()
        await fast_writer(10)  # these start writing after the holder but commit before it
        await poll_once()
        await poll_once()
        release.set()
        await holder
        await fast_writer(3)
    for _ in range(300):  # every transaction has ended: the fence must now let everything by
        await poll_once()
        if set(seen) >= expected:
            break
        await asyncio.sleep(0.05)
    counts = Counter(seen)
    assert not [k for k, n in counts.items() if n > 1], "a version was delivered twice"
    assert set(seen) == expected, f"missed: {expected - set(seen)}"


async def test_cursor_feed_pages_carry_includes_and_elements(client: httpx.AsyncClient) -> None:
    """The README's poll asks ``_include=Task:focus`` with ``_cursor``: the provider gets each
    new Task's ServiceRequest on the same page, and ``_elements`` applies as on any search."""
    sr = (
        await client.post(
            "/fhir/ServiceRequest",
            json={
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "subject": {"reference": "Patient/p1"},
            },
            headers=FHIR_JSON,
        )
    ).json()
    made = (
        await client.post(
            "/fhir/Task", json=task(focus=f"ServiceRequest/{sr['id']}"), headers=FHIR_JSON
        )
    ).json()
    url = (
        "/fhir/Task?owner=Organization/prov-1&status=requested&_include=Task:focus"
        "&_elements=status&_cursor=start"
    )
    page = await first_page_with_entries(client, url)
    kinds = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in page["entry"]]
    assert kinds == [("Task", "match"), ("ServiceRequest", "include")]
    shown = page["entry"][0]["resource"]
    assert shown["status"] == "requested" and "focus" not in shown
    assert "SUBSETTED" in {t["code"] for t in shown["meta"]["tag"]}
    assert "_include=Task%3Afocus" in link(page, "cursor")  # type: ignore[operator]
    # The Task leaves the search: reported, without its ServiceRequest again.
    await client.put(
        f"/fhir/Task/{made['id']}",
        json=dict(made, status="accepted"),
        headers={**FHIR_JSON, "If-Match": 'W/"1"'},
    )
    after = await first_page_with_entries(client, link(page, "cursor"))  # type: ignore[arg-type]
    kinds = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in after["entry"]]
    assert kinds == [("Task", "match")]
    assert after["entry"][0]["search"]["extension"][0]["valueBoolean"] is True


async def first_page_with_entries(
    client: httpx.AsyncClient, url: str, patience: float = 15.0
) -> dict[str, Any]:
    """GET ``url``, then its cursor link, until a page has entries (see ``drain_until``: on
    PostgreSQL a commit shows once every older transaction has finished)."""
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        page: dict[str, Any] = (await client.get(url)).json()
        if page.get("entry") or asyncio.get_running_loop().time() > deadline:
            return page
        url = link(page, "cursor")  # type: ignore[assignment]
        await asyncio.sleep(0.05)


async def test_cursor_feed_reports_what_it_cannot_apply(client: httpx.AsyncClient) -> None:
    """Sorting, totals, counts and _page tokens mean nothing on a feed page: they are reported
    (or refused under strict handling), never silently dropped."""
    await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)
    url = "/fhir/Task?owner=Organization/prov-1&_sort=-_lastUpdated&_total=accurate&_cursor=start"
    page = (await client.get(url)).json()
    assert "total" not in page
    outcome = next(e for e in page["entry"] if e["search"]["mode"] == "outcome")["resource"]
    said = " ".join(i["diagnostics"] for i in outcome["issue"])
    assert "_sort does not apply with _cursor" in said
    assert "_total does not apply with _cursor" in said
    assert "_sort" not in link(page, "self")  # type: ignore[operator]
    strict = await client.get(url, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert strict.json()["resourceType"] == "OperationOutcome"
    assert "_sort does not apply with _cursor" in strict.text
    count = await client.get(
        "/fhir/Task?_summary=count&_cursor=start", headers={"Prefer": "handling=strict"}
    )
    assert count.status_code == 400 and "_summary=count" in count.text


def versions(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (e["resource"]["id"], e["resource"]["meta"]["versionId"], e["resource"]["status"])
        for e in entries
    ]


async def put(client: httpx.AsyncClient, body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    r = await client.put(
        f"/fhir/Task/{body['id']}",
        json=dict(body, **changes),
        headers={**FHIR_JSON, "If-Match": f'W/"{body["meta"]["versionId"]}"'},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_first_sync_gets_current_versions_only(client: httpx.AsyncClient) -> None:
    """A feed from ``start`` hands out each resource's current version once, never the
    versions it superseded: a Task created ``requested`` and accepted before the first sync is
    no business of a ``status=requested`` poll, and an ``owner`` poll sees it accepted."""
    left = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    left = await put(client, left, status="accepted")
    stays = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    stays = await put(client, stays, businessStatus={"text": "called"})
    stays = await put(client, stays, businessStatus={"text": "called twice"})
    gone = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    assert (await client.delete(f"/fhir/Task/{gone['id']}")).status_code in (200, 204)
    owner = "/fhir/Task?owner=Organization/prov-1"

    requested, cursor = await drain_until(client, f"{owner}&status=requested&_cursor=start", 1)
    assert versions(requested) == [(stays["id"], "3", "requested")]
    page = (await client.get(f"{owner}&status=requested&_cursor=start")).json()
    assert not [e for e in page.get("entry", []) if e["search"]["mode"] == "outcome"]

    everything, _ = await drain_until(client, f"{owner}&_cursor=start&_count=1", 2)
    assert versions(everything) == [(left["id"], "2", "accepted"), (stays["id"], "3", "requested")]

    # After the first pass, each change as it commits, leaving the search included.
    await put(client, stays, status="accepted")
    changed, _ = await drain_until(client, cursor, 1)
    assert versions(changed) == [(stays["id"], "4", "accepted")]
    assert changed[0]["search"]["extension"][0]["valueBoolean"] is True


async def test_first_pass_across_pages_hands_out_each_resource_once(
    client: httpx.AsyncClient,
) -> None:
    """Paging through the first pass while Tasks change: no superseded version is handed out,
    a Task the client saw and that then left the search is reported, and a Task changed ahead
    of the client's page arrives once, current."""
    made = [(await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()]
    for _ in range(5):
        made.append((await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json())
    made[0] = await put(client, made[0], businessStatus={"text": "before the sync"})
    url = "/fhir/Task?owner=Organization/prov-1&status=requested&_cursor=start&_count=2"
    first = await first_page_with_entries(client, url)
    seen = versions([e for e in first["entry"] if e["search"]["mode"] == "match"])
    assert seen == [(made[1]["id"], "1", "requested"), (made[2]["id"], "1", "requested")]
    # While the client pages: a Task it saw leaves the search, one it has not reached changes.
    await put(client, made[1], status="accepted")
    await put(client, made[5], businessStatus={"text": "during the sync"})
    expected = [
        *seen,
        (made[3]["id"], "1", "requested"),
        (made[4]["id"], "1", "requested"),
        (made[0]["id"], "2", "requested"),
        (made[1]["id"], "2", "accepted"),  # flagged: no longer matches
        (made[5]["id"], "2", "requested"),
    ]
    rest, _ = await drain_until(client, link(first, "next"), len(expected) - 2)  # type: ignore[arg-type]
    seen += versions(rest)
    assert seen == expected


async def test_first_pass_waits_for_commits_an_open_transaction_holds_back(
    app, client: httpx.AsyncClient
) -> None:
    """On PostgreSQL a commit is final once every older transaction has ended. A first sync
    that starts while one is open does not end its pass before the commits it holds back: when
    they are final the pass hands out their current versions, never the superseded ones."""
    if app.state.engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: no commit is ever held back")
    ctx = WorkflowContext(
        engine=app.state.engine,
        settings=app.state.settings,
        base_url="http://testserver/fhir",
        request_id="test",
        rules=app.state.rules,
    )
    release = asyncio.Event()
    holder_wrote = asyncio.Event()

    async def holder() -> None:
        async with write_transaction(ctx.engine) as conn:
            await wf.create_in(conn, ctx, task())
            holder_wrote.set()
            await release.wait()

    held = asyncio.create_task(holder())
    await holder_wrote.wait()
    made = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    made = await put(client, made, businessStatus={"text": "before the sync"})
    url = "/fhir/Task?owner=Organization/prov-1&_cursor=start&_count=5"
    page = (await client.get(url)).json()
    assert not page.get("entry")  # held back by the open transaction
    release.set()
    await held
    entries, _ = await drain(client, link(page, "cursor"))  # type: ignore[arg-type]
    mine = [e for e in entries if e["resource"]["id"] == made["id"]]
    assert [e["resource"]["meta"]["versionId"] for e in mine] == ["2"]
