"""A client that hangs up stops its search: the server cancels the handler and PostgreSQL the
statement, instead of running it for nobody until the statement timeout.

Through a real uvicorn server and a real socket, since the disconnect is the server's to see.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from tests.expensive import expensive_search, load_tasks

pytestmark = pytest.mark.postgres

# ~15 s a statement to plan on the development machine; the statement timeout is far away.
CRITERIA = 600


@pytest.fixture
def settings(database_url: str) -> Settings:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL cancels a statement on request; SQLite runs it to its deadline")
    return Settings(  # type: ignore[call-arg]
        database_url=database_url,
        public_base_url=None,
        gc_gen0_threshold=0,
        db_statement_timeout_ms=300_000,
        search_max_params=1000,
        search_max_repeats=1000,
        _env_file=None,
    )


@pytest.fixture
async def server(app: object, engine: AsyncEngine) -> AsyncIterator[int]:
    """The app served by uvicorn on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
    )
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve())
    while not served.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    yield port
    served.should_exit = True
    await task


async def searches_running(database_url: str) -> list[asyncpg.Record]:
    """This database's statements in progress that read the search index."""
    u = make_url(database_url)
    conn = await asyncpg.connect(
        host=u.host, port=u.port or 5432, user=u.username, password=u.password, database=u.database
    )
    try:
        return list(
            await conn.fetch(
                "SELECT pid, query_start FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%search_index%'"
            )
        )
    finally:
        await conn.close()


async def wait_for(condition: object, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_hanging_up_cancels_the_statement(
    server: int, client: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    await load_tasks(engine, 20_000)
    form = urlencode(expensive_search(CRITERIA)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(
        b"POST /fhir/Task/_search HTTP/1.1\r\nHost: testserver\r\n"
        + f"Authorization: {client.headers['Authorization']}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(form)}\r\n\r\n".encode()
        + form
    )
    await writer.drain()

    async def started() -> bool:
        return bool(await searches_running(database_url))

    assert await wait_for(started, seconds=30), "the search never reached the database"
    writer.close()
    hung_up = time.monotonic()

    async def stopped() -> bool:
        return not await searches_running(database_url)

    # Left alone, the statement would plan for several seconds more (see CRITERIA).
    assert await wait_for(stopped, seconds=5), "the statement outlived its client"
    assert time.monotonic() - hung_up < 5
    assert await reader.read() == b""  # nothing was answered to nobody

    # The pooled connection the statement ran on serves the next request.
    # Host: the token's audience is the test server's FHIR base.
    headers = {**client.headers, "Host": "testserver"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server}", headers=headers) as live:
        r = await live.get("/fhir/Task", params={"identifier": "V-7"})
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["bulk-7"]
