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

**Same-work ceiling** (``BENCH_CEILING_WORK=work.json``): the same routes, each sending the very
statements the service sends for that request, captured from the service (``bench.capture``)
and replayed with the request's own values, fresh ids and the current time
(``bench.replay``): its reads and polls write their AuditEvent, its creates write history
and index rows, in one transaction where the service uses one. The statements the service
sends through its audit group commit are merged across concurrent requests as the service
merges them (``bench.replay.GroupCommit``).

* ``GET /fhir/Task/{id}``: the read template (the request's id substituted); answers the
  ``raw`` column its first statement returns.
* ``POST /fhir/Task``: the create template; answers the service's captured answer with this
  request's ids and time (201).
* ``POST /v1/referrals``: the referral template, the JMS referral number of the posted payload
  (``referral_id`` after ``BENCH-``) substituted; answers as for a create (201).
* ``GET /fhir/Task?owner=..&_cursor=..``: the poll's first statement (the feed, identical in
  every poll template); then the rest of the template captured for a page of that many entries
  (nearest: a full page of 50 or a caught-up empty one); the Bundle as above.

    BENCH_CEILING_DSN=postgresql://... BENCH_CEILING_WORK=work.json \
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

from bench.replay import Compiled, GroupCommit, Replay, Template, compile_template

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
    work_path = os.environ.get("BENCH_CEILING_WORK")
    if work_path:
        return _same_work_app(dsn, pool_size, work_path)

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
        body = _bundle(request, rows, owner=owner, cursor=cursor, count=count, txid=txid, seq=seq)
        return Response(body, media_type=FHIR_JSON)

    return app


def _bundle(
    request: Request, rows: list[Any], *, owner: str, cursor: str, count: str, txid: int, seq: int
) -> bytes:
    """The searchset Bundle the service answers for a poll's page ``rows`` (feed columns)."""
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
    return head if not entries else head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"


# --- the same-work ceiling ------------------------------------------------------------------


def _first_raw(results: list[list[Any]]) -> str | None:
    """The ``raw`` column of the first row of the first statement that returns one."""
    for rows in results:
        if rows and "raw" in rows[0]:
            raw: str | None = rows[0]["raw"]
            return raw
    return None


def _same_work_app(dsn: str, pool_size: int, work_path: str) -> FastAPI:
    with open(work_path, "rb") as fh:
        work = orjson.loads(fh.read())
    templates = {
        name: compile_template(Template.from_dict(d)) for name, d in work["templates"].items()
    }
    polls = sorted(
        (t for t in templates.values() if t.template.page is not None),
        key=lambda t: t.template.page or 0,
    )
    if polls:
        firsts = {(p.steps[0].sql, p.steps[0].checkout, p.steps[0].transaction) for p in polls}
        if len(firsts) != 1 or not all(p.steps[0].releases for p in polls):
            raise RuntimeError("the poll templates do not start with the same feed statement")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=min(10, pool_size), max_size=pool_size)
        app.state.pool = pool
        app.state.groups = GroupCommit(pool)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    async def replay(compiled: Compiled, tokens: dict[str, Any], state: Any) -> Any:
        ctx = compiled.context(tokens)
        run = Replay(state.pool, ctx, state.groups)
        try:
            results = await run.run(compiled.steps)
        finally:
            await run.close()
        return ctx, results

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/fhir/Task/{resource_id}")
    async def read(resource_id: str, request: Request) -> Response:
        _ctx, results = await replay(templates["read"], {"rid": resource_id}, request.app.state)
        raw = _first_raw(results)
        if raw is None:
            return Response(status_code=404)
        return Response(raw.encode(), media_type=FHIR_JSON)

    async def write(compiled: Compiled, tokens: dict[str, Any], state: Any) -> Response:
        ctx, _results = await replay(compiled, tokens, state)
        body = compiled.response(ctx).encode() if compiled.response is not None else b"{}"
        return Response(body, status_code=compiled.template.status, media_type=FHIR_JSON)

    @app.post("/fhir/Task")
    async def create(request: Request) -> Response:
        orjson.loads(await request.body())  # parsed, as the existing ceiling and the service do
        return await write(templates["create"], {}, request.app.state)

    @app.post("/v1/referrals")
    async def referral(request: Request) -> Response:
        payload = orjson.loads(await request.body())
        seq = str(payload["referral_id"]).removeprefix("BENCH-")
        return await write(templates["referral"], {"seq": seq}, request.app.state)

    @app.get("/fhir/Task")
    async def poll(request: Request) -> Response:
        q = request.query_params
        owner, cursor, count = q["owner"], q["_cursor"], q.get("_count", "50")
        txid, seq = _decode_cursor(cursor)
        tokens = {"owner": owner, "cursor": cursor, "after_txid": txid, "after_seq": seq}
        ctx = polls[0].context(tokens)
        for p in polls[1:]:
            for name, value in p.context(tokens).values.items():
                ctx.values.setdefault(name, value)
        run = Replay(request.app.state.pool, ctx, request.app.state.groups)
        try:
            rows = (await run.run(polls[0].steps[:1]))[0]
            chosen = min(polls, key=lambda p: abs((p.template.page or 0) - len(rows)))
            await run.run(chosen.steps[1:])
        finally:
            await run.close()
        body = _bundle(request, rows, owner=owner, cursor=cursor, count=count, txid=txid, seq=seq)
        return Response(body, media_type=FHIR_JSON)

    return app
