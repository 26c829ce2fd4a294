"""Client status is remembered between requests only while PostgreSQL announces its changes
(storage/client_status.py), and a disabled client still stops at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage import client_status as status_module
from service.storage.client_status import ClientStatus, client_status
from service.storage.clients import CLIENT_STATUS_CHANNEL
from tests.conftest import BASE, TokenFactory


@pytest.fixture
def status_reads(engine: AsyncEngine) -> Iterator[list[str]]:
    """Statements that read a client's status, as they reach the database."""
    seen: list[str] = []

    def remember(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "oauth_client" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", remember)
    yield seen
    event.remove(engine.sync_engine, "before_cursor_execute", remember)


async def _until(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 5.0) -> float:
    """Seconds until ``condition`` held; fails after ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    pytest.fail(f"not within {seconds} s")


async def _other_process(engine: AsyncEngine, sql: str, *args: Any) -> None:
    """Run SQL on a connection of its own, as another replica or the CLI would."""
    u = make_url(engine.url.render_as_string(hide_password=False))
    conn = await asyncpg.connect(
        host=u.host, port=u.port or 5432, user=u.username, password=u.password, database=u.database
    )
    try:
        async with conn.transaction():
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _setup(app: Any, issue_token: TokenFactory) -> tuple[httpx.AsyncClient, str]:
    token = await issue_token(client_id="status-client", organization="Organization/jail-a")
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=BASE,
        headers={"Authorization": f"Bearer {token}"},
    )
    return http, "status-client"


@pytest.fixture
async def listening(
    app: Any, engine: AsyncEngine, issue_token: TokenFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, str, ClientStatus]]:
    """PostgreSQL only: a client that has made one request, and its engine's cache once the
    listener is up."""
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's (on SQLite the status is read per request)")
    http, cid = await _setup(app, issue_token)
    cache = client_status(engine)
    async with http:
        assert (await http.get("/fhir/Task")).status_code == 200
        await _until(lambda: cache.listening)
        yield http, cid, cache


def _listener_pid(cache: ClientStatus) -> int:
    assert cache._conn is not None
    pid: int = cache._conn.get_server_pid()
    return pid


async def test_status_is_read_per_request_until_changes_are_announced(
    app: Any, engine: AsyncEngine, issue_token: TokenFactory, status_reads: list[str]
) -> None:
    http, _cid = await _setup(app, issue_token)
    cache = client_status(engine)
    async with http:
        assert (await http.get("/fhir/Task")).status_code == 200
        if engine.dialect.name == "postgresql":
            await _until(lambda: cache.listening)
        else:
            assert not cache.listening  # SQLite: nobody would announce a change
        status_reads.clear()
        for _ in range(3):
            assert (await http.get("/fhir/Task")).status_code == 200
    expected = 1 if engine.dialect.name == "postgresql" else 3  # the first read is remembered
    assert len(status_reads) == expected


async def test_a_disable_by_another_process_is_heard(
    engine: AsyncEngine, listening: tuple[httpx.AsyncClient, str, ClientStatus]
) -> None:
    http, cid, _cache = listening
    assert (await http.get("/fhir/Task")).status_code == 200  # remembered
    # What clients.set_disabled does, in two steps and from another process (no in-process
    # shortcut). Unannounced, the remembered answer stands: proof it was kept.
    await _other_process(
        engine, "UPDATE oauth_client SET disabled = true WHERE client_id = $1", cid
    )
    assert (await http.get("/fhir/Task")).status_code == 200
    await _other_process(engine, f"SELECT pg_notify('{CLIENT_STATUS_CHANNEL}', $1)", cid)

    async def refused() -> bool:
        return (await http.get("/fhir/Task")).status_code == 401

    await _until(refused, 5.0)  # heard at commit: milliseconds here (generous under load)


async def test_without_the_listener_every_request_reads_the_status(
    engine: AsyncEngine, listening: tuple[httpx.AsyncClient, str, ClientStatus]
) -> None:
    http, cid, cache = listening
    pid = _listener_pid(cache)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    await _until(lambda: not cache.listening)
    # An unannounced change is now seen at once: nothing is remembered.
    await _other_process(
        engine, "UPDATE oauth_client SET disabled = true WHERE client_id = $1", cid
    )
    assert (await http.get("/fhir/Task")).status_code == 401
    # The listener comes back by itself (and forgets everything read while it was away).
    await _until(lambda: cache.listening, 5.0)
    assert _listener_pid(cache) != pid
    assert (await http.get("/fhir/Task")).status_code == 401


async def test_an_answer_read_while_a_change_is_heard_is_not_kept(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ClientStatus(engine)
    cache._listening = True  # as if listening (no connection needed for this race)
    cache._task = asyncio.get_running_loop().create_task(asyncio.sleep(0))

    async def read_while_disabled_elsewhere(_conn: Any, client_id: str) -> bool:
        cache.forget(client_id)  # the notification arrives while the read is under way
        return True

    monkeypatch.setattr(status_module.store, "is_active", read_while_disabled_elsewhere)
    assert await cache.is_active("c1") is True
    assert "c1" not in cache._known  # the next request reads again

    async def plain_read(_conn: Any, _client_id: str) -> bool:
        return True

    monkeypatch.setattr(status_module.store, "is_active", plain_read)
    assert await cache.is_active("c1") is True
    assert cache._known == {"c1": True}
    cache.forget()
    assert cache._known == {}


async def test_disposing_the_engine_ends_the_listener(
    engine: AsyncEngine, listening: tuple[httpx.AsyncClient, str, ClientStatus]
) -> None:
    _http, _cid, cache = listening
    pid = _listener_pid(cache)
    await engine.dispose()
    assert not cache.listening and cache._conn is None

    async def gone() -> bool:
        async with engine.connect() as conn:
            row = await conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
            return row.scalar_one() == 0

    await _until(gone)
