"""Expensive requests cost their sender, not everyone: a statement past the statement timeout is
stopped and answered 400 (never 503), and the service keeps answering others meanwhile.

The expensive request is a real search (tests.expensive) over 20,000 Tasks: PostgreSQL takes
seconds to plan it, SQLite longer to run it; the statement timeout here is 3 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.settings import Settings
from service.storage.db import create_engine
from tests.conftest import BASE, TokenFactory
from tests.expensive import expensive_search, load_tasks

TASKS = 20_000
TIMEOUT_MS = 3000
POOL = 4  # so the default share is 2, and the pool is small enough to run out


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database_url=database_url,
        public_base_url=None,
        gc_gen0_threshold=0,
        search_max_params=1000,
        search_max_repeats=1000,
        _env_file=None,
    )


@pytest.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The app under test, on an engine of its own: a pool of POOL connections that a request
    waits at most a second for (503 past it), and the statement timeout (the fixtures'
    engine, which empties and fills the tables, keeps the defaults)."""
    tested = settings.model_copy(
        update={"db_statement_timeout_ms": TIMEOUT_MS, "db_pool_size": POOL, "db_pool_timeout": 1}
    )
    own = create_engine(tested)
    yield create_app(tested, engine=own)
    await own.dispose()


@pytest.fixture
async def many_tasks(engine: AsyncEngine) -> None:
    await load_tasks(engine, TASKS)


@pytest.fixture
def expensive(engine: AsyncEngine) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    """Sends the expensive search: on PostgreSQL ~15 s a statement to plan, on SQLite (which
    plans in no time but runs every criterion on every Task) ~25 s to run: each is stopped by
    the statement timeout."""
    criteria = 600 if engine.dialect.name == "postgresql" else 200
    form = urlencode(expensive_search(criteria))

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            "/fhir/Task/_search",
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    return send


Expensive = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def test_a_statement_past_the_timeout_is_refused_with_400(
    client: httpx.AsyncClient, expensive: Expensive, many_tasks: None
) -> None:
    r = await expensive(client)
    assert r.status_code == 400, r.text
    assert "retry-after" not in r.headers  # nothing to wait for: the request asks too much
    issue = r.json()["issue"][0]
    assert issue["code"] == "too-costly"
    assert f"limit of {TIMEOUT_MS} ms (HANDOFF_DB_STATEMENT_TIMEOUT_MS)" in issue["diagnostics"]
    # The connection it ran on serves the next request.
    r = await client.get("/fhir/Task", params={"identifier": "V-7"})
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["bulk-7"]
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_one_clients_expensive_searches_leave_the_others_served(
    app: FastAPI,
    client: httpx.AsyncClient,
    issue_token: TokenFactory,
    expensive: Expensive,
    many_tasks: None,
) -> None:
    """Ten at once from one client: 2 (the pool of 4 less 2, the default share) run until the
    statement timeout stops them, 8 are refused 429; meanwhile another client's reads and the
    readiness probe are answered as usual (they would wait for a connection, and get 503
    after a second, if the ten held the pool)."""
    token = await issue_token(scopes="system/*.cruds handoff/admin", client_id="greedy")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=BASE,
        headers={"Authorization": f"Bearer {token}"},
    ) as greedy:

        async def others() -> list[httpx.Response]:
            answers = []
            for i in range(5):
                answers.append(await client.get("/fhir/Task", params={"identifier": f"V-{i}"}))
                answers.append(await client.get("/readyz"))
            return answers

        *answers, served = await asyncio.gather(*(expensive(greedy) for _ in range(10)), others())
        assert all(r.status_code == 200 for r in served), [r.text for r in served]
        assert all(r.json() == {"status": "ready"} for r in served if r.url.path == "/readyz")
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [400] * 2 + [429] * 8, [r.text for r in answers]
        for r in answers:
            issue = r.json()["issue"][0]
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
                assert issue["code"] == "throttled"
                assert "HANDOFF_MAX_CONCURRENT_PER_CLIENT" in issue["diagnostics"]
            else:
                assert issue["code"] == "too-costly"
        # Every slot was given back.
        assert app.state.client_concurrency.held("greedy") == 0
        assert (await greedy.get("/fhir/Task", params={"identifier": "V-1"})).status_code == 200
