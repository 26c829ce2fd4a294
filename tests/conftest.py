"""Shared fixtures: every API test runs on SQLite and on PostgreSQL.

PostgreSQL comes from HANDOFF_TEST_POSTGRES_URL (default: the local server's `test` database).
One scratch database per test session is created from it, migrated with Alembic, and its
tables emptied between tests. Without a reachable server the PostgreSQL runs skip, except
under CI (the CI environment variable), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.auth.scopes import ScopeSet
from service.auth.tokens import issue_access_token
from service.settings import Settings
from service.storage.clients import ClientRecord, add_client, get_client
from service.storage.db import create_engine, write_transaction
from service.storage.migrate import upgrade
from service.workflows.authn import Authenticator

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TABLES = (
    "resource",
    "resource_history",
    "search_index",
    "idempotency_record",
    "oauth_client",
    "used_assertion",
    "signing_key_ring",
    "subscription_state",
    "subscription_event",
    "subscription_cursor",
    "measure_release",
    "measure_referral",
    "measure_event",
)
BASE = "http://testserver"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: runs on SQLite alone")


async def _pg_admin(url: str, statement: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(
        host=u.host, port=u.port or 5432, user=u.username, password=u.password, database=u.database
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    base = os.environ.get("HANDOFF_TEST_POSTGRES_URL", DEFAULT_PG)
    name = f"handoff_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg_admin(base, f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # unreachable server
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI but unreachable at {base}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {base} ({exc}); set HANDOFF_TEST_POSTGRES_URL")
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    asyncio.run(_pg_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "handoff.db"
        shutil.copy(template, target)
        return f"sqlite+aiosqlite:///{target}"
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("SQLite-only test")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    # gc_gen0_threshold=0: apps started by tests leave the test process's collector alone.
    # Races are tested with bursts of one client's requests (twenty conditional creates at
    # once): no fair share refuses them here (tests/api/test_expensive_requests.py tests it).
    return Settings(  # type: ignore[call-arg]
        database_url=database_url,
        public_base_url=None,
        gc_gen0_threshold=0,
        max_concurrent_per_client=1000,
        _env_file=None,
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    yield engine
    await engine.dispose()


@pytest.fixture
def app(settings: Settings, engine: AsyncEngine):  # type: ignore[no-untyped-def]
    return create_app(settings, engine=engine)


TokenFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def issue_token(app, engine: AsyncEngine) -> AsyncIterator[TokenFactory]:  # type: ignore[no-untyped-def]
    """Register a client (secret-less) and sign a token for it, without the token endpoint."""
    auth = Authenticator(engine=engine, settings=app.state.settings)
    app.state.auth = auth

    async def make(
        *,
        organization: str | None = None,
        scopes: str = "system/*.cruds",
        client_id: str | None = None,
        lifetime: int = 300,
        base: str = BASE,
    ) -> str:
        cid = client_id or f"client-{uuid.uuid4().hex[:8]}"
        async with write_transaction(engine) as conn:
            if await get_client(conn, cid) is None:
                await add_client(
                    conn,
                    ClientRecord(
                        client_id=cid,
                        name=cid,
                        organization=organization,
                        scopes=scopes,
                        secret_hash=None,
                        jwks=None,
                        jwks_uri=None,
                        disabled=False,
                        created=datetime.now(UTC),
                    ),
                )
        issued = issue_access_token(
            client_id=cid,
            organization=organization,
            scopes=ScopeSet.parse(scopes),
            ring=await auth.ring(),
            issuer=f"{base}/auth",
            audience=f"{base}/fhir",
            now=datetime.now(UTC),
            lifetime_seconds=lifetime,
        )
        return issued.access_token

    yield make
    await auth.close()


@pytest.fixture
def http_log() -> list[tuple[str, str, int, str]]:
    """(method, path, status, request id) of every request the test clients made."""
    return []


def _hooks(log: list[tuple[str, str, int, str]]) -> dict[str, list[Callable[..., Any]]]:
    async def remember(response: httpx.Response) -> None:
        log.append(
            (
                response.request.method,
                response.request.url.path,
                response.status_code,
                response.headers.get("x-request-id", ""),
            )
        )

    return {"response": [remember]}


@pytest.fixture
async def anon_client(app, http_log) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE, event_hooks=_hooks(http_log)
    ) as c:
        yield c


@pytest.fixture
async def client(app, issue_token: TokenFactory, http_log) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    """An administrator's client: sees everything (tenancy is tested with org clients)."""
    token = await issue_token(scopes="system/*.cruds handoff/admin", client_id="test-admin")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url=BASE,
        headers={"Authorization": f"Bearer {token}"},
        event_hooks=_hooks(http_log),
    ) as c:
        yield c


@pytest.fixture
async def org_client(app, issue_token: TokenFactory, http_log):  # type: ignore[no-untyped-def]
    """Factory: an httpx client acting for an organization with the given scopes."""
    opened: list[httpx.AsyncClient] = []

    async def make(organization: str, scopes: str = "system/*.cruds") -> httpx.AsyncClient:
        token = await issue_token(organization=organization, scopes=scopes)
        c = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url=BASE,
            headers={"Authorization": f"Bearer {token}"},
            event_hooks=_hooks(http_log),
        )
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


@pytest.fixture
async def instruments(app, engine: AsyncEngine) -> None:  # type: ignore[no-untyped-def]
    """Load the built-in instruments (the app's start-up does this; ASGI tests skip it)."""
    from service.features.assessments.rules import ensure_builtin_content

    await ensure_builtin_content(engine, app.state.settings, app.state.rules)


async def admin_headers(app: Any, engine: AsyncEngine, base: str = BASE) -> dict[str, str]:
    """An administrator's bearer token for an app a test built itself."""
    auth = app.state.auth = Authenticator(engine=engine, settings=app.state.settings)
    async with write_transaction(engine) as conn:
        if await get_client(conn, "test-admin") is None:
            await add_client(
                conn,
                ClientRecord(
                    client_id="test-admin",
                    name="test-admin",
                    organization=None,
                    scopes="system/*.cruds handoff/admin",
                    secret_hash=None,
                    jwks=None,
                    jwks_uri=None,
                    disabled=False,
                    created=datetime.now(UTC),
                ),
            )
    issued = issue_access_token(
        client_id="test-admin",
        organization=None,
        scopes=ScopeSet.parse("system/*.cruds handoff/admin"),
        ring=await auth.ring(),
        issuer=f"{base}/auth",
        audience=f"{base}/fhir",
        now=datetime.now(UTC),
    )
    return {"Authorization": f"Bearer {issued.access_token}"}
