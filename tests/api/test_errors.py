"""Every error under /fhir is an OperationOutcome with the right status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request

from service.api.errors import handle_unexpected
from tests.builders import FHIR_JSON, task


def assert_outcome(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"], body
    assert all(i.get("diagnostics") for i in body["issue"])
    if code:
        assert body["issue"][0]["code"] == code
    return body


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Task", content=b'{"resourceType": "Task",', headers=FHIR_JSON)
    body = assert_outcome(r, 400)
    assert "not valid JSON" in body["issue"][0]["diagnostics"]


async def test_wrong_resource_type_for_url_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Task", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    assert_outcome(r, 400)


async def test_xml_content_type_is_415(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/fhir/Task", content=b"<Task/>", headers={"Content-Type": "application/fhir+xml"}
    )
    assert_outcome(r, 415, "not-supported")


@pytest.mark.parametrize(
    ("params", "headers"),
    [({"_format": "xml"}, {}), ({}, {"Accept": "application/fhir+xml"})],
)
async def test_xml_requested_is_406(client: httpx.AsyncClient, params: dict, headers: dict) -> None:
    r = await client.get("/fhir/metadata", params=params, headers=headers)
    assert_outcome(r, 406, "not-supported")


async def test_format_json_is_honoured(client: httpx.AsyncClient) -> None:
    r = await client.get("/fhir/metadata", params={"_format": "json"})
    assert r.status_code == 200
    assert r.json()["resourceType"] == "CapabilityStatement"


async def test_unknown_route_and_type_are_404(client: httpx.AsyncClient) -> None:
    assert_outcome(await client.get("/fhir/Nonsense"), 404, "not-found")
    assert_outcome(await client.get("/fhir/Task/a/b/c/d"), 404)


async def test_unsupported_method_is_405(client: httpx.AsyncClient) -> None:
    r = await client.delete("/fhir/Task")
    assert_outcome(r, 405, "not-supported")
    # Every method the path serves, though FastAPI serves each as its own route.
    assert r.headers["allow"] == "GET, POST"
    r = await client.post("/fhir/Task/some-id")
    assert r.headers["allow"] == "DELETE, GET, PATCH, PUT"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/fhir/Task/_search", "POST"),
        ("GET", "/fhir/Task/_search", "POST"),
        ("DELETE", "/fhir/Patient/_search", "POST"),
        ("DELETE", "/fhir/Patient/_history", "GET"),
        ("PUT", "/fhir/Task/_history", "GET"),
        ("PATCH", "/fhir/Task/_history", "GET"),
    ],
)
async def test_wrong_method_on_search_or_history_is_405_not_a_bad_id(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    # These paths also match /fhir/Task/{id}; the id pattern refuses "_search", but the
    # mistake is the method.
    r = await client.request(method, path, json=task(), headers=FHIR_JSON)
    body = assert_outcome(r, 405, "not-supported")
    assert r.headers["allow"] == allow
    assert f"{method} is not supported on {path}" in body["issue"][0]["diagnostics"]


async def test_a_bad_id_is_still_400(
    client: httpx.AsyncClient, anon_client: httpx.AsyncClient
) -> None:
    body = assert_outcome(await client.get("/fhir/Task/_bad"), 400, "invalid")
    assert "resource_id" in body["issue"][0]["diagnostics"]
    body = assert_outcome(await client.get("/fhir/Task/bad%20id/_history/1"), 400, "invalid")
    assert "resource_id" in body["issue"][0]["diagnostics"]
    # The caller is known before its request is judged: no token, 401 whatever the id.
    assert_outcome(await anon_client.get("/fhir/Task/_bad"), 401, "login")


async def test_oversized_body_is_413(app, client: httpx.AsyncClient) -> None:
    limit = app.state.settings.max_body_bytes
    big = task()
    big["description"] = "x" * (limit + 10)
    r = await client.post("/fhir/Task", json=big, headers=FHIR_JSON)
    assert_outcome(r, 413, "too-costly")


async def test_oversized_streamed_body_is_413(app, client: httpx.AsyncClient) -> None:
    """A body sent without Content-Length (chunked) is counted as it arrives."""
    limit = app.state.settings.max_body_bytes
    big = task()
    big["description"] = "x" * (limit + 10)
    data = json.dumps(big).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    r = await client.post("/fhir/Task", content=chunks(), headers=FHIR_JSON)
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_outcome(r, 413, "too-costly")


async def test_bad_if_match_is_400(client: httpx.AsyncClient) -> None:
    created = (await client.post("/fhir/Task", json=task(), headers=FHIR_JSON)).json()
    r = await client.put(
        f"/fhir/Task/{created['id']}", json=created, headers={**FHIR_JSON, "If-Match": "banana"}
    )
    assert_outcome(r, 400)


async def _read_as_a_server_would(
    app: Any, client: httpx.AsyncClient, headers: dict[str, str] | None = None
) -> httpx.Response:
    """GET /fhir/Task/x as the client, answered as a server answers an unexpected exception
    (the test transport would raise it instead)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    auth = {"Authorization": client.headers["Authorization"]}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", headers=auth
    ) as c:
        return await c.get("/fhir/Task/x", headers=headers or {})


async def test_unexpected_error_is_500_without_leaking(
    app, client: httpx.AsyncClient, monkeypatch
) -> None:
    from service.workflows import resources

    async def boom(*_a, **_k):
        raise RuntimeError("Jane Doe DOB 1990-04-02 secret")

    monkeypatch.setattr(resources, "read", boom)
    r = await _read_as_a_server_would(app, client, {"X-Request-ID": "req-123"})
    body = assert_outcome(r, 500, "exception")
    assert "Jane" not in r.text and "secret" not in r.text
    assert "req-123" in body["issue"][0]["diagnostics"]
    assert r.headers["X-Request-ID"] == "req-123"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), 503),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), 503),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), 503),
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), 503),
        (asyncpg.InterfaceError("cannot perform operation: connection is closed"), 503),
        (asyncpg.exceptions.QueryCanceledError("canceling statement due to timeout"), 500),
        (asyncpg.exceptions.UntranslatableCharacterError("unsupported Unicode escape"), 400),
    ],
)
async def test_errors_of_the_driver_connection_are_answered_as_sqlalchemy_s(
    app, client: httpx.AsyncClient, monkeypatch, error: Exception, status: int
) -> None:
    """The read by id, the poll and the audit flush run on the asyncpg connection itself:
    its own exceptions say the database is gone (503, retry) as SQLAlchemy's would."""
    from service.storage import repository

    async def fails(*_a, **_k):
        raise error

    monkeypatch.setattr(repository, "fetch_all", fails)
    r = await _read_as_a_server_would(app, client)
    assert_outcome(r, status, {503: "transient", 500: "exception", 400: "invalid"}[status])
    if status == 503:
        assert int(r.headers["Retry-After"]) > 0


async def test_a_client_that_disconnects_mid_body_is_not_a_server_error(
    app, issue_token, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """The body never arrives (the client went away): a 400 nobody reads, logged quietly —
    not an unhandled 500 paging the operator."""
    token = await issue_token(scopes="system/*.cruds")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/fhir/Task",
        "raw_path": b"/fhir/Task",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/fhir+json"),
            (b"content-length", b"2000"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    messages = [{"type": "http.request", "body": b'{"resourceType":', "more_body": True}]

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_nul_characters_are_refused_where_they_arrive(
    client: httpx.AsyncClient, org_client
) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL cannot store U+0000 (SQLite can): the same clear 400/422 on both databases,
    naming where it was, instead of a server error at the insert or the search."""
    bad = {"resourceType": "Patient", "name": [{"family": "Ri\u0000vera"}]}
    body = assert_outcome(await client.post("/fhir/Patient", json=bad, headers=FHIR_JSON), 400)
    assert "NUL" in body["issue"][0]["diagnostics"]
    assert body["issue"][0]["expression"] == ["name[0].family"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": bad, "request": {"method": "POST", "url": "Patient"}}],
    }
    assert_outcome(await client.post("/fhir", json=bundle, headers=FHIR_JSON), 400)
    # A text that merely spells the escape is no NUL.
    fine = {"resourceType": "Patient", "name": [{"family": "back\\u0000slash"}]}
    assert (await client.post("/fhir/Patient", json=fine, headers=FHIR_JSON)).status_code == 201
    for url in ("/fhir/Patient?name=a%00b", "/fhir/Patient?_id=a%00b", "/fhir/Task?owner=%00"):
        body = assert_outcome(await client.get(url), 400, "invalid")
        assert "the URL contains a NUL" in body["issue"][0]["diagnostics"]
    searched = await client.post(
        "/fhir/Patient/_search",
        content=b"name=a%00b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "NUL" in assert_outcome(searched, 400)["issue"][0]["diagnostics"]
    jail = await org_client("Organization/nul-jail")
    body = assert_outcome(await jail.get("/v1/referrals/a%00b"), 400)
    r = await jail.post("/v1/referrals/x/cancel", json={"reason": "moved\u0000away"})
    assert r.status_code == 422 and "reason contains a NUL" in r.text
    # Nothing was stored by the refused requests.
    found = (await client.get("/fhir/Patient", params={"family": "Ri"})).json()
    assert found.get("entry", []) == []


async def test_postgresql_refusing_a_nul_is_a_client_error(engine) -> None:  # type: ignore[no-untyped-def]
    """The safety net behind the input checks: PostgreSQL's refusal of U+0000 is a 400."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite stores U+0000")
    with pytest.raises(DBAPIError) as refused:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT CAST(:doc AS jsonb)"), {"doc": '{"a": "\\u0000"}'})
    scope = {"type": "http", "method": "POST", "path": "/fhir/Task", "headers": [], "state": {}}
    response = await handle_unexpected(Request(scope), refused.value)
    assert response.status_code == 400
    assert b"NUL" in bytes(response.body)
