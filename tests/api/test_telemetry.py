"""Traces and metrics: the route and the database are visible, health data is not."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.settings import Settings
from service.storage.db import write_transaction
from service.storage.repository import IndexEntry, StoredResource, write_version
from service.telemetry import (
    ReferralCounts,
    Telemetry,
    instrument_httpx_client,
    workflow_span,
)
from tests.builders import FHIR_JSON, organization, patient
from tests.conftest import admin_headers
from tests.log_capture import json_logs

SECRET = "Zebediah"


def _span_text(span: ReadableSpan) -> str:
    """Everything a span would carry out of the process, as one string."""
    parts: list[Any] = [span.name, dict(span.attributes or {}), span.status.description]
    for event in span.events:
        parts += [event.name, dict(event.attributes or {})]
    return repr(parts)


def _points(data: MetricsData | None, name: str) -> list[Any]:
    assert data is not None
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


@pytest.fixture
def telemetry(app) -> Telemetry:  # type: ignore[no-untyped-def]
    t: Telemetry | None = app.state.telemetry
    assert t is not None, "create_app installs telemetry unless OTEL_SDK_DISABLED=true"
    return t


async def test_search_and_create_leave_no_health_data_in_spans_or_logs(
    client: httpx.AsyncClient, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    exported = InMemorySpanExporter()  # what an OTLP exporter would receive
    telemetry.add_span_exporter(exported, batch=False)
    live = InMemorySpanExporter()  # the spans as the instrumentations left them
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(live))

    with json_logs("DEBUG") as logs:  # the most talkative production setting
        created = await client.post(
            "/fhir/Patient", json=patient(family=SECRET, given=SECRET), headers=FHIR_JSON
        )
        assert created.status_code == 201
        found = await client.get("/fhir/Patient", params={"name": SECRET, "_count": "5"})
        assert found.status_code == 200
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [created.json()["id"]]
        # An unhappy path: the value comes back in the 400 body, but goes nowhere else.
        bad = await client.get("/fhir/Patient", params={"birthdate": SECRET})
        assert bad.status_code == 400

    for spans in (exported.get_finished_spans(), live.get_finished_spans()):
        assert spans
        for span in spans:
            assert SECRET not in _span_text(span), span.name

    spans = exported.get_finished_spans()
    servers = [s for s in spans if s.name == "GET /fhir/Patient"]
    assert len(servers) == 2
    search = servers[0]
    assert search.attributes is not None and search.context is not None
    assert search.attributes["http.route"] == "/fhir/Patient"
    assert str(search.attributes["http.url"]).endswith("/fhir/Patient?name&_count")
    assert any(s.name == "POST /fhir/Patient" for s in spans)
    statements = [
        str(s.attributes["db.statement"])
        for s in spans
        if s.attributes
        and "db.statement" in s.attributes
        and s.context is not None
        and s.context.trace_id == search.context.trace_id
    ]
    assert any("search_index" in statement for statement in statements)
    # The read by id's statement runs on the asyncpg connection itself on PostgreSQL, out of
    # SQLAlchemy's instrumentation: it is traced all the same (the SQL, not its values).
    read = await client.get(f"/fhir/Patient/{created.json()['id']}")
    assert read.status_code == 200
    spans = exported.get_finished_spans()
    [server] = [s for s in spans if s.name == "GET /fhir/Patient/{resource_id}"]
    assert server.context is not None
    in_read = [
        s
        for s in spans
        if s.context is not None
        and s.context.trace_id == server.context.trace_id
        and s.attributes
        and "FROM resource" in str(s.attributes.get("db.statement", ""))
    ]
    assert in_read, [s.name for s in spans]
    assert all(SECRET not in _span_text(s) for s in in_read)

    # What leaves the process (JSON on stdout), and every record as logged.
    assert SECRET not in logs.text
    assert caplog.records
    for record in caplog.records:
        assert SECRET not in record.getMessage()
    access = [r for r in logs.records() if r["logger"] == "handoff.access"]
    assert [(r["route"], r["status"]) for r in access] == [
        ("/fhir/Patient", 201),
        ("/fhir/Patient", 200),
        ("/fhir/Patient", 400),
    ]
    assert access[1]["params"] == ["name", "_count"]
    assert access[1]["request_id"] == found.headers["X-Request-ID"]
    assert access[1]["trace_id"] == format_trace_id(search.context.trace_id)
    assert isinstance(access[1]["duration_ms"], float)


@pytest.mark.sqlite_only
def test_exported_spans_lose_exception_text_even_when_recorded(telemetry: Telemetry) -> None:
    """The last line of defence: an instrumentation that records an error message verbatim."""
    exported = InMemorySpanExporter()
    telemetry.add_span_exporter(exported, batch=False)
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("SELECT handoff") as span:
        span.set_attribute("url.full", f"https://idp.example/jwks?kid={SECRET}")
        span.record_exception(ValueError(f'invalid input syntax: "{SECRET}"'))
        span.set_status(Status(StatusCode.ERROR, f'invalid input syntax: "{SECRET}"'))
    [out] = exported.get_finished_spans()
    assert SECRET not in _span_text(out)
    assert out.status.status_code is StatusCode.ERROR
    [event] = out.events
    assert event.attributes is not None and event.attributes["exception.type"] == "ValueError"
    assert "exception.message" not in event.attributes
    assert out.attributes is not None
    assert out.attributes["url.full"] == "https://idp.example/jwks?kid"


@pytest.mark.sqlite_only
async def test_outbound_httpx_calls_are_traced_without_query_values(
    app, telemetry: Telemetry
) -> None:  # type: ignore[no-untyped-def]
    exported = InMemorySpanExporter()
    telemetry.add_span_exporter(exported, batch=False)
    live = InMemorySpanExporter()
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(live))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"keys": []}))
    async with httpx.AsyncClient(transport=transport) as outbound:
        instrument_httpx_client(app, outbound)
        r = await outbound.get("https://idp.example/jwks", params={"kid": SECRET})
        assert r.status_code == 200
    for spans in (exported.get_finished_spans(), live.get_finished_spans()):
        [span] = spans
        assert span.kind is SpanKind.CLIENT
        assert SECRET not in _span_text(span)
        assert span.attributes is not None
        url = span.attributes.get("http.url") or span.attributes.get("url.full")
        assert url == "https://idp.example/jwks?kid"


async def test_without_an_exporter_only_callers_trace_context_makes_a_span(
    client: httpx.AsyncClient, telemetry: Telemetry
) -> None:
    live = InMemorySpanExporter()  # sees every span made, exported or not
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(live))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with json_logs("INFO") as logs:
        assert (await client.get("/fhir/Patient", params={"_count": "1"})).status_code == 200
        traced = await client.get(
            "/fhir/Patient",
            params={"_count": "1"},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert traced.status_code == 200
    servers = [s for s in live.get_finished_spans() if s.name == "GET /fhir/Patient"]
    assert [format_trace_id(s.context.trace_id) for s in servers if s.context] == [trace_id]
    access = [r for r in logs.records() if r["logger"] == "handoff.access"]
    assert [r["trace_id"] for r in access] == [None, trace_id]


async def test_probes_are_not_traced(client: httpx.AsyncClient, telemetry: Telemetry) -> None:
    spans = InMemorySpanExporter()
    telemetry.add_span_exporter(spans, batch=False)
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/fhir/metadata")).status_code == 200
    names = [s.name for s in spans.get_finished_spans()]
    assert "GET /fhir/metadata" in names
    assert not [n for n in names if "healthz" in n or "readyz" in n]


async def test_request_metrics_are_per_route_template_and_status(
    client: httpx.AsyncClient, telemetry: Telemetry
) -> None:
    reader = InMemoryMetricReader()
    telemetry.add_metric_reader(reader)
    assert (await client.get("/fhir/Patient/no-such-id-123")).status_code == 404
    assert (await client.get("/fhir/Patient/no-such-id-456")).status_code == 404
    assert (await client.get("/fhir/Patient", params={"name": SECRET})).status_code == 200
    assert (await client.get("/not/a/route/789")).status_code == 404

    data = reader.get_metrics_data()
    counts = {
        (
            p.attributes.get("http.request.method"),
            p.attributes.get("http.route"),
            p.attributes["http.response.status_code"],
        ): p.value
        for p in _points(data, "handoff.http.server.requests")
    }
    assert counts[("GET", "/fhir/Patient/{resource_id}", 404)] == 2
    assert counts[("GET", "/fhir/Patient", 200)] == 1
    assert counts[("GET", None, 404)] == 1  # matched no route: no http.route at all
    durations = {
        (p.attributes.get("http.route"), p.attributes["http.response.status_code"]): p
        for p in _points(data, "http.server.request.duration")
    }
    point = durations[("/fhir/Patient/{resource_id}", 404)]
    assert point.count == 2 and point.sum > 0
    assert point.sum < 60  # seconds, not milliseconds
    flat = repr([p.attributes for p in _points(data, "handoff.http.server.requests")])
    for raw in ("no-such-id", "789", SECRET):
        assert raw not in flat


async def test_pool_gauges_report_this_replicas_pool(
    client: httpx.AsyncClient, telemetry: Telemetry, engine: AsyncEngine, settings: Settings
) -> None:
    reader = InMemoryMetricReader()
    telemetry.add_metric_reader(reader)
    assert (await client.get("/fhir/Patient")).status_code == 200
    async with engine.connect():
        data = reader.get_metrics_data()  # one connection checked out right now
    used = {
        p.attributes["db.client.connection.state"]: p.value
        for p in _points(data, "db.client.connection.count")
    }
    assert used["used"] == 1
    assert used["idle"] >= 0
    [size] = _points(data, "handoff.db.pool.size")
    [most] = _points(data, "db.client.connection.max")
    if engine.dialect.name == "postgresql":
        assert size.value == settings.db_pool_size
        assert most.value == settings.db_pool_size + settings.db_max_overflow
    else:
        assert size.value == engine.sync_engine.pool.size()  # type: ignore[attr-defined]
        assert most.value > size.value


async def _write_task(engine: AsyncEngine, task_id: str, version: int, status: str | None) -> None:
    """A Task version straight into storage (the referral workflow is not under test here)."""
    deleted = status is None
    index = [] if deleted else [IndexEntry("Task", task_id, version, "status", value=status)]
    async with write_transaction(engine) as conn:
        await write_version(
            conn,
            stored=StoredResource(
                "Task",
                task_id,
                version,
                datetime.now(UTC),
                deleted,
                None if deleted else f'{{"resourceType":"Task","id":"{task_id}"}}',
            ),
            method="DELETE" if deleted else ("POST" if version == 1 else "PUT"),
            content=None,
            index=index,
        )


async def test_referral_gauge_counts_current_tasks_per_status(
    client: httpx.AsyncClient, telemetry: Telemetry, engine: AsyncEngine
) -> None:
    await _write_task(engine, "t1", 1, "requested")
    await _write_task(engine, "t1", 2, "accepted")  # only the current version counts
    await _write_task(engine, "t2", 1, "requested")
    await _write_task(engine, "t3", 1, "requested")
    await _write_task(engine, "t3", 2, None)  # deleted: not counted
    reader = InMemoryMetricReader()
    telemetry.add_metric_reader(reader)
    assert (await client.get("/healthz")).status_code == 200  # binds the app's event loop
    [counts] = telemetry.referrals
    await counts.refresh()

    points = _points(reader.get_metrics_data(), "handoff.referrals")
    assert {p.attributes["handoff.referral.status"]: p.value for p in points} == {
        "requested": 1,
        "accepted": 1,
    }


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_referral_counts_query_at_most_once_per_max_age(engine: AsyncEngine) -> None:
    clock = _Clock()
    counts = ReferralCounts(engine, max_age=30, clock=clock)
    counts.bind_loop(asyncio.get_running_loop())
    await _write_task(engine, "t1", 1, "requested")
    # Collected on the loop's own thread: the cache (empty so far), and no query left behind.
    assert list(counts.observe(None)) == []  # type: ignore[arg-type]
    assert counts.stale()

    # The metric reader's thread: the query runs on the loop and the reader waits for it.
    first = await asyncio.to_thread(lambda: list(counts.observe(None)))  # type: ignore[arg-type]
    assert [(o.value, o.attributes) for o in first] == [
        (1, {"handoff.referral.status": "requested"})
    ]
    await _write_task(engine, "t2", 1, "in-progress")
    clock.now += 29  # within max_age: the cached answer, no query
    cached = await asyncio.to_thread(lambda: list(counts.observe(None)))  # type: ignore[arg-type]
    assert [o.value for o in cached] == [1]
    clock.now += 1
    fresh = await asyncio.to_thread(lambda: list(counts.observe(None)))  # type: ignore[arg-type]
    assert {o.attributes["handoff.referral.status"]: o.value for o in fresh} == {  # type: ignore[index]
        "requested": 1,
        "in-progress": 1,
    }


async def test_referral_counts_are_dropped_not_stale_when_the_database_fails(
    engine: AsyncEngine,
) -> None:
    counts = ReferralCounts(engine, max_age=30)
    await _write_task(engine, "t1", 1, "requested")
    assert await counts.refresh() == {"requested": 1}
    counts.engine = _BrokenEngine()  # type: ignore[assignment]
    assert await counts.refresh() == {}
    assert counts.counts == {}


class _BrokenEngine:
    def connect(self) -> Any:
        raise ConnectionRefusedError("database down")


@pytest.mark.sqlite_only
async def test_otel_sdk_disabled_installs_nothing(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    app = create_app(settings, engine=engine)
    assert app.state.telemetry is None
    assert not [m for m in app.user_middleware if m.cls is OpenTelemetryMiddleware]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        assert (await c.get("/healthz")).status_code == 200


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A stand-in OTLP/HTTP collector on a free port."""
    received: list[tuple[str, bytes]] = []
    handler = type("Handler", (_Collector,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.sqlite_only
async def test_otlp_export_when_the_endpoint_is_set(
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    collector: tuple[str, list[tuple[str, bytes]]],
) -> None:
    endpoint, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "handoff-test")
    app = create_app(settings, engine=engine)
    telemetry: Telemetry = app.state.telemetry
    try:
        transport = httpx.ASGITransport(app=app)
        token = await admin_headers(app, engine)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=token
        ) as c:
            r = await c.post("/fhir/Patient", json=patient(family=SECRET), headers=FHIR_JSON)
            assert r.status_code == 201
            assert (await c.get("/fhir/Patient", params={"name": SECRET})).status_code == 200
        assert telemetry.tracer_provider.force_flush()
        assert telemetry.meter_provider.force_flush()
    finally:
        await asyncio.to_thread(telemetry.shutdown)

    traces = [body for path, body in received if path == "/v1/traces"]
    metrics = [body for path, body in received if path == "/v1/metrics"]
    assert traces and metrics
    for body in traces + metrics:
        assert SECRET.encode() not in body
    names = set()
    service_names = set()
    for body in traces:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            for attr in rs.resource.attributes:
                if attr.key == "service.name":
                    service_names.add(attr.value.string_value)
            names |= {s.name for ss in rs.scope_spans for s in ss.spans}
    assert {"POST /fhir/Patient", "GET /fhir/Patient"} <= names
    assert service_names == {"handoff-test"}
    metric_names = {
        m.name
        for body in metrics
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {"handoff.http.server.requests", "http.server.request.duration"} <= metric_names


def test_no_exporter_without_an_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.telemetry import otlp_configured

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not otlp_configured("traces")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert otlp_configured("traces", env)
    assert not otlp_configured("traces", {**env, "OTEL_TRACES_EXPORTER": "none"})
    assert otlp_configured("metrics", {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c/v1/m"})
    assert not otlp_configured("traces", {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c"})


@pytest.mark.sqlite_only
async def test_captured_headers_never_include_credentials(
    settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "authorization,x-request-id"
    )
    app = create_app(settings, engine=engine)
    spans = InMemorySpanExporter()
    app.state.telemetry.add_span_exporter(spans, batch=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        headers = {"Authorization": "Bearer s3cr3t-token", "X-Request-ID": "abc"}
        assert (await c.get("/fhir/metadata", headers=headers)).status_code == 200
    [server] = [s for s in spans.get_finished_spans() if s.name == "GET /fhir/metadata"]
    assert server.attributes is not None
    assert server.attributes["http.request.header.x_request_id"] == ("abc",)
    assert "s3cr3t-token" not in _span_text(server)


@pytest.mark.sqlite_only
async def test_workflow_spans_carry_only_the_allowed_attributes(
    app,  # type: ignore[no-untyped-def]
    client: httpx.AsyncClient,
    telemetry: Telemetry,
) -> None:
    spans = InMemorySpanExporter()
    telemetry.add_span_exporter(spans, batch=False)

    @app.get("/_test/workflow/{task_id}")
    async def run(task_id: str, fail: bool = False) -> dict[str, str]:
        with workflow_span(
            "workflow.open_referral",
            resource_type="Task",
            interaction="create",
            resource_id=task_id,
            search_params=["patient", f"{SECRET} Smith"],
        ):
            if fail:
                raise KeyError(f"no patient {SECRET}")
        return {"ok": "yes"}

    assert (await client.get("/_test/workflow/t1")).status_code == 200
    assert (await client.get("/_test/workflow/t2", params={"fail": "true"})).status_code == 500
    with workflow_span("workflow.outside", resource_type="Task", interaction="read") as span:
        assert not span.is_recording()  # no request, no telemetry: nothing recorded

    finished = spans.get_finished_spans()
    flows = [s for s in finished if s.name == "workflow.open_referral"]
    assert [dict(s.attributes or {}) for s in flows] == [
        {
            "handoff.resource_type": "Task",
            "handoff.interaction": "create",
            "handoff.resource_id": resource_id,
            "handoff.search_params": ("patient", "?"),
            "handoff.outcome": outcome,
        }
        for resource_id, outcome in (("t1", "success"), ("t2", "KeyError"))
    ]
    assert flows[1].status.status_code is StatusCode.ERROR and not flows[1].events
    servers = {s.context.span_id: s for s in finished if s.name.startswith("GET /_test")}  # type: ignore[union-attr]
    assert all(f.parent is not None and f.parent.span_id in servers for f in flows)
    assert not [s for s in finished if SECRET in _span_text(s)]


async def test_fastapi_makes_no_spans_of_its_own_beside_ours(
    client: httpx.AsyncClient, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a global tracer provider set (as ``opentelemetry-instrument`` does), FastAPI's own
    telemetry would trace every request a second time, beside ``service.telemetry``'s spans."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    global_spans = InMemorySpanExporter()
    global_provider = TracerProvider()
    global_provider.add_span_processor(SimpleSpanProcessor(global_spans))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: global_provider)
    ours = InMemorySpanExporter()
    telemetry.add_span_exporter(ours, batch=False)
    assert (await client.get("/fhir/metadata")).status_code == 200
    assert "GET /fhir/metadata" in [s.name for s in ours.get_finished_spans()]
    assert global_spans.get_finished_spans() == ()


@pytest.mark.sqlite_only
async def test_jms_use_cases_emit_workflow_spans(
    client: httpx.AsyncClient,
    org_client,  # type: ignore[no-untyped-def]
    telemetry: Telemetry,
) -> None:
    """The README's promise: each /v1 use case is a ``workflow.*`` span under the request's,
    carrying the resource type, interaction, id when given, and the outcome; nothing else."""
    from tests.api.test_referrals import referral

    spans = InMemorySpanExporter()
    telemetry.add_span_exporter(spans, batch=False)
    otp = (await client.post("/fhir/Organization", json=organization(), headers=FHIR_JSON)).json()
    jail_org = (
        await client.post("/fhir/Organization", json=organization("Jail", "j"), headers=FHIR_JSON)
    ).json()
    jail = await org_client(f"Organization/{jail_org['id']}")
    made = await jail.post("/v1/referrals", json=referral(f"Organization/{otp['id']}"))
    assert made.status_code == 201, made.text
    sr_id = made.json()["referral_id"]
    assert (await jail.get(f"/v1/referrals/{sr_id}")).status_code == 200
    assert (await jail.get("/v1/referrals/no-such-referral")).status_code == 404

    finished = spans.get_finished_spans()
    flows = [s for s in finished if s.name.startswith("workflow.")]
    assert [(s.name, dict(s.attributes or {})) for s in flows] == [
        (
            "workflow.open_referral",
            {
                "handoff.resource_type": "ServiceRequest",
                "handoff.interaction": "create",
                "handoff.outcome": "success",
            },
        ),
        (
            "workflow.get_referral",
            {
                "handoff.resource_type": "ServiceRequest",
                "handoff.interaction": "read",
                "handoff.resource_id": sr_id,
                "handoff.outcome": "success",
            },
        ),
        (
            "workflow.get_referral",
            {
                "handoff.resource_type": "ServiceRequest",
                "handoff.interaction": "read",
                "handoff.resource_id": "no-such-referral",
                "handoff.outcome": "ResourceNotFoundError",
            },
        ),
    ]
    servers = {s.context.span_id for s in finished if s.name.split(" ")[-1].startswith("/v1")}  # type: ignore[union-attr]
    assert all(f.parent is not None and f.parent.span_id in servers for f in flows)
    assert not [s for s in finished if "Rivera" in _span_text(s)]
