"""JSON log lines: ids on every line, an allow-list of fields, no health data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_trace_id
from starlette.types import Receive, Scope, Send

from service.logging_config import AccessLogMiddleware, StdoutHandler
from service.request_context import request_id_var
from tests.log_capture import json_logs

SECRET = "Zebediah"


def test_every_line_is_json_with_request_and_trace_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    with json_logs("INFO") as logs:
        log = logging.getLogger("handoff.test")
        log.info("outside any request")
        token = request_id_var.set("req-1")
        try:
            with tracer.start_as_current_span("work") as span:
                log.info("inside a request")
        finally:
            request_id_var.reset(token)
    outside, inside = logs.records()
    assert outside["message"] == "outside any request"
    assert outside["request_id"] is None and outside["trace_id"] is None
    assert outside["level"] == "INFO" and outside["logger"] == "handoff.test"
    assert outside["time"].endswith("Z")
    assert inside["request_id"] == "req-1"
    assert inside["trace_id"] == format_trace_id(span.get_span_context().trace_id)


def test_level_comes_from_settings() -> None:
    with json_logs("WARNING") as logs:
        logging.getLogger("handoff.test").info("quiet")
        logging.getLogger("handoff.test").warning("loud")
    assert [r["message"] for r in logs.records()] == ["loud"]


def test_configuring_twice_keeps_one_handler_and_quiets_chatty_libraries() -> None:
    with json_logs("DEBUG"), json_logs("DEBUG") as logs:
        ours = [h for h in logging.getLogger().handlers if isinstance(h, StdoutHandler)]
        assert len(ours) == 1
        # aiosqlite logs every statement WITH its parameters at DEBUG.
        logging.getLogger("aiosqlite").debug("executing ('%s',)", SECRET)
        logging.getLogger("sqlalchemy.engine").info("[generated] ('%s',)", SECRET)
        logging.getLogger("uvicorn.error").info("Waiting for application shutdown.")
    assert SECRET not in logs.text
    assert [r["logger"] for r in logs.records()] == ["uvicorn.error"]


def test_exceptions_keep_type_and_place_but_not_message() -> None:
    def lookup() -> None:
        raise KeyError(f"no patient named {SECRET}")

    with json_logs("INFO") as logs:
        try:
            lookup()
        except KeyError:
            logging.getLogger("handoff.test").exception("lookup failed")
    [line] = logs.records()
    assert line["error"] == "KeyError"
    assert "lookup" in line["where"]
    assert SECRET not in logs.text


def test_only_allowed_fields_and_no_query_values() -> None:
    with json_logs("INFO") as logs:
        logging.getLogger("handoff.test").info(
            "fetched https://idp.example/jwks?kid=%s",
            SECRET,
            extra={"resource_type": "Patient", "patient_name": SECRET, "outcome": "ok"},
        )
    [line] = logs.records()
    assert line["message"] == "fetched https://idp.example/jwks?kid"
    assert line["resource_type"] == "Patient" and line["outcome"] == "ok"
    assert "patient_name" not in line
    assert SECRET not in logs.text


@dataclass
class _Principal:
    client_id: str


def _app(*, status: int = 200, principal: bool = False, fail: bool = False) -> Any:
    from starlette.routing import Route

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["request_id"] = "rid-42"
        scope["route"] = Route("/fhir/Patient/{resource_id}", endpoint=lambda r: None)
        if principal:
            scope["state"]["principal"] = _Principal("ehr-client")
        if fail:
            raise RuntimeError(f"boom {SECRET}")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return AccessLogMiddleware(app)


async def _get(app: Any, url: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await c.get(url)


async def test_access_line_has_route_template_status_duration_ids_and_client() -> None:
    with json_logs("INFO") as logs:
        r = await _get(_app(status=404, principal=True), f"/fhir/Patient/123?name={SECRET}")
    assert r.status_code == 404
    [line] = logs.records()
    assert line["event"] == "request" and line["logger"] == "handoff.access"
    assert line["method"] == "GET"
    assert line["route"] == "/fhir/Patient/{resource_id}"
    assert line["status"] == 404
    assert line["duration_ms"] >= 0
    assert line["request_id"] == "rid-42"
    assert line["client_id"] == "ehr-client"
    assert line["params"] == ["name"]
    assert SECRET not in logs.text and "/fhir/Patient/123" not in logs.text


async def test_access_line_without_principal_and_for_failures() -> None:
    with json_logs("INFO") as logs, pytest.raises(RuntimeError):
        await _get(_app(fail=True), "/fhir/Patient/1")
    [line] = logs.records()
    assert line["status"] == 500 and line["level"] == "WARNING"
    assert "client_id" not in line
    assert SECRET not in logs.text


async def test_successful_probes_log_at_debug_only() -> None:
    async def probe(scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.routing import Route

        scope["route"] = Route("/readyz", endpoint=lambda r: None)
        status = 503 if scope["query_string"] == b"down" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with json_logs("INFO") as logs:
        await _get(AccessLogMiddleware(probe), "/readyz")
        await _get(AccessLogMiddleware(probe), "/readyz?down")
    assert [(r["route"], r["status"]) for r in logs.records()] == [("/readyz", 503)]
