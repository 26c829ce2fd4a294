"""The ceiling: a bare FastAPI + asyncpg app doing only the database work of each benchmark.

* ``GET /fhir/Task/{id}``: primary-key select of the 2 KB ``jsonb`` document (``content``) of
  the same ``resource`` rows the service reads; answers its orjson bytes.
* ``POST /fhir/Task``: ``orjson.loads`` the body, give it an id, insert it as one 2 KB ``jsonb``
  row (table ``bench_ceiling_task``: text primary key + jsonb), answer the bytes (201).
* ``POST /v1/referrals``: the same single 2 KB ``jsonb`` insert of the posted JMS payload.
* ``GET /fhir/Task?owner=..&status=requested&_cursor=..&_count=50``: runs the very SQL the
  service runs for that poll (captured by ``bench.feed_sql``, passed in a JSON file) and
  answers the same searchset Bundle bytes the service would (entries spliced from ``raw``).

No middleware, no authentication, no validation: the cost of the stack itself. Same server
settings as the service (uvicorn, the same number of workers, uvloop + httptools, no access
log).

    BENCH_CEILING_DSN=postgresql://... BENCH_CEILING_FEED=feed.json \
        uvicorn bench.ceiling_app:create_app --factory
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

FHIR_JSON = "application/fhir+json; charset=utf-8"
CEILING_TABLE = "bench_ceiling_task"
CREATE_TABLE = f"CREATE TABLE IF NOT EXISTS {CEILING_TABLE} (id text PRIMARY KEY, body jsonb)"
READ_SQL = "SELECT content FROM resource WHERE resource_type = 'Task' AND id = $1"
INSERT_SQL = f"INSERT INTO {CEILING_TABLE} (id, body) VALUES ($1, $2)"
NO_LONGER_MATCHES = "https://handoff.dev/fhir/StructureDefinition/search-no-longer-matches"


def _instant(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _cursor(txid: int, seq: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(["c", txid, seq])).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[int, int]:
    if token == "start":
        return -1, -1
    value = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return int(value[1]), int(value[2])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda v: v if isinstance(v, str) else orjson.dumps(v).decode(),
        decoder=orjson.loads,
        format="text",
    )


def create_app() -> FastAPI:
    dsn = os.environ["BENCH_CEILING_DSN"]
    pool_size = int(os.environ.get("BENCH_CEILING_POOL", "15"))
    feed_path = os.environ.get("BENCH_CEILING_FEED")
    feed: dict[str, Any] | None = None
    if feed_path:
        with open(feed_path, "rb") as fh:
            feed = orjson.loads(fh.read())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            dsn, min_size=min(10, pool_size), max_size=pool_size, init=_init_connection
        )
        async with pool.acquire() as conn:
            # another worker may create it at the same moment
            with contextlib.suppress(asyncpg.UniqueViolationError):
                await conn.execute(CREATE_TABLE)
        app.state.pool = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/fhir/Task/{resource_id}")
    async def read(resource_id: str, request: Request) -> Response:
        body = await request.app.state.pool.fetchval(READ_SQL, resource_id)
        if body is None:
            return Response(status_code=404)
        return Response(orjson.dumps(body), media_type=FHIR_JSON)

    @app.post("/fhir/Task")
    @app.post("/v1/referrals")
    async def create(request: Request) -> Response:
        body = orjson.loads(await request.body())
        body["id"] = os.urandom(16).hex()
        raw = orjson.dumps(body)
        await request.app.state.pool.execute(INSERT_SQL, body["id"], raw.decode())
        return Response(raw, status_code=201, media_type=FHIR_JSON)

    @app.get("/fhir/Task")
    async def poll(request: Request) -> Response:
        assert feed is not None, "start the ceiling with BENCH_CEILING_FEED for polls"
        q = request.query_params
        owner, cursor, count = q["owner"], q["_cursor"], q.get("_count", "50")
        txid, seq = _decode_cursor(cursor)
        params = list(feed["params"])
        for i in feed["owner_at"]:
            params[i] = owner
        for i in feed["txid_at"]:
            params[i] = txid
        for i in feed["seq_at"]:
            params[i] = seq
        rows = await request.app.state.pool.fetch(feed["sql"], *params)
        base = f"http://{request.headers['host']}/fhir"
        common = [("owner", owner), ("status", "requested"), ("_count", count)]

        def link(c: str) -> str:
            return f"{base}/Task?" + urlencode([*common, ("_cursor", c)])

        links = [{"relation": "self", "url": link(cursor)}]
        if rows:
            nxt = _cursor(rows[-1]["txid"], rows[-1]["seq"])
            links.append({"relation": "cursor", "url": link(nxt)})
            if len(rows) >= int(count):
                links.append({"relation": "next", "url": link(nxt)})
        else:
            links.append({"relation": "cursor", "url": link(_cursor(txid, seq))})
        head = orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "meta": {"lastUpdated": _instant(datetime.now(UTC))},
                "link": links,
            }
        )
        entries = []
        for r in rows:
            if r["deleted"]:
                continue
            search: dict[str, Any] = {"mode": "match"}
            if not r["now_matches"]:
                search["extension"] = [{"url": NO_LONGER_MATCHES, "valueBoolean": True}]
            entries.append(
                b'{"fullUrl":'
                + orjson.dumps(f"{base}/Task/{r['id']}")
                + b',"resource":'
                + r["raw"].encode()
                + b',"search":'
                + orjson.dumps(search)
                + b"}"
            )
        body = head if not entries else head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"
        return Response(body, media_type=FHIR_JSON)

    return app
