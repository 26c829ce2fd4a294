"""OpenTelemetry: traces of requests, database calls and outbound HTTP; request, referral and
connection-pool metrics. Exported by OTLP (http/protobuf) when ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set; otherwise no span is made unless the caller sent trace context (``ServerSpans``).

Nothing that leaves through here may carry health data: span attributes hold resource types,
ids, route templates, interactions, outcomes and search parameter NAMES, never query values,
statement parameters or exception messages. URL attributes are scrubbed where the
instrumentations set them (hooks) and again on the way out (``RedactingSpanProcessor``).

The providers belong to the app (``app.state.telemetry``), not to the process: nothing is set
globally, so several apps (tests) can live side by side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import httpx
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor, RequestInfo
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from sqlalchemy import Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.redaction import redact_query, redact_target, redact_text, redact_url, safe_names
from service.route_template import route_template
from service.settings import Settings
from service.storage import driver
from service.storage.repository import index_t, resource_t

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("handoff.telemetry")

# The app's telemetry during a request (set by RequestMetricsMiddleware) for workflow spans.
_current: ContextVar[Telemetry | None] = ContextVar("handoff_telemetry", default=None)

SERVICE_NAME = "handoff"
# Probes are polled every few seconds: tracing them would drown the real traffic.
PROBE_URLS = ("/healthz$", "/readyz$")
SANITIZED_HEADERS = ("authorization", "cookie", "set-cookie", ".*token.*", ".*secret.*")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
# URL-bearing attributes of the HTTP semantic conventions (old and stable names).
_URL_KEYS = frozenset({"http.url", "url.full"})
_TARGET_KEYS = frozenset({"http.target"})
_QUERY_KEYS = frozenset({"url.query"})
# Exception events keep the type; message and stack trace may quote stored values.
_EXCEPTION_DROP = frozenset({"exception.message", "exception.stacktrace"})


# --- scrubbing ---------------------------------------------------------------------------


def scrub_attributes(attributes: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
    """The URL attributes among ``attributes`` rewritten without query values (only those)."""
    changed: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if not isinstance(value, str):
            continue
        if key in _URL_KEYS:
            changed[key] = redact_url(value)
        elif key in _TARGET_KEYS:
            changed[key] = redact_target(value)
        elif key in _QUERY_KEYS:
            changed[key] = redact_query(value)
    return changed


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of a finished span fit to leave the process.

    Ended spans are immutable, so the redacted copy is built anew (the SDK offers no other way
    to rewrite attributes an instrumentation set after the last hook ran, such as the status
    description SQLAlchemy's instrumentation takes from the driver's error message).
    """
    attributes = dict(span.attributes or {})
    attributes.update(scrub_attributes(attributes))
    events = []
    for event in span.events:
        event_attributes = {
            k: v for k, v in (event.attributes or {}).items() if k not in _EXCEPTION_DROP
        }
        event_attributes.update(scrub_attributes(event_attributes))
        events.append(Event(event.name, event_attributes, event.timestamp))
    name = redact_text(span.name) if "?" in span.name else span.name
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanProcessor(SpanProcessor):
    """Hands the exporting processor a redacted copy of every finished span."""

    def __init__(self, delegate: SpanProcessor) -> None:
        self._delegate = delegate

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self._delegate.on_start(span, parent_context)  # type: ignore[arg-type]

    def on_end(self, span: ReadableSpan) -> None:
        self._delegate.on_end(redact_span(span))

    def shutdown(self) -> None:
        self._delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._delegate.force_flush(timeout_millis)


def _scrub_live_span(span: Span) -> None:
    # SDK spans expose what the instrumentation set at start; overwrite the URL attributes.
    attributes = getattr(span, "attributes", None)
    if span.is_recording() and attributes:
        for key, value in scrub_attributes(attributes).items():
            span.set_attribute(key, value)


def _initial_span_details(scope: Scope) -> tuple[str, dict[str, str]]:
    # Renamed to "METHOD /route/{template}" once routed (RequestMetricsMiddleware).
    return str(scope.get("method") or "HTTP"), {}


def _name_server_span(method: str, route: str | None) -> None:
    span = trace.get_current_span()
    if route and span.is_recording() and getattr(span, "kind", None) is SpanKind.SERVER:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)


def _server_request_hook(span: Span, _scope: dict[str, Any]) -> None:
    _scrub_live_span(span)


async def _httpx_request_hook(span: Span, _request: RequestInfo) -> None:
    _scrub_live_span(span)


def _httpx_sync_request_hook(span: Span, _request: RequestInfo) -> None:
    _scrub_live_span(span)


# --- referral counts ---------------------------------------------------------------------


def referral_counts_query() -> Select[str | None, int]:
    """Current (not deleted) Tasks per status: a range of the search index (resource_type,
    param, value, ...) joined to ``resource`` by primary key. Linear in the number of Task
    versions, hence the cache."""
    current = and_(
        resource_t.c.resource_type == index_t.c.resource_type,
        resource_t.c.id == index_t.c.resource_id,
        resource_t.c.version_id == index_t.c.version_id,
    )
    return (
        select(index_t.c.value, func.count())
        .select_from(index_t.join(resource_t, current))
        .where(
            index_t.c.resource_type == "Task",
            index_t.c.param == "status",
            resource_t.c.deleted.is_(False),
        )
        .group_by(index_t.c.value)
    )


class ReferralCounts:
    """Task counts per status for an observable gauge, queried at most once per ``max_age``.

    The metric reader calls the gauge from its own thread; the query runs on the app's event
    loop (the engine is async) and the reader waits for it briefly. Called on the loop's own
    thread, it answers from cache (``refresh`` can be awaited there instead).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_age: float = 30.0,
        clock: Any = time.monotonic,
        wait_seconds: float = 5.0,
    ) -> None:
        self.engine = engine
        self._max_age = max_age
        self._clock = clock
        self._wait = wait_seconds
        self._counts: dict[str, int] = {}
        self._fetched_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: concurrent.futures.Future[dict[str, int]] | None = None
        self._lock = threading.Lock()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age

    async def refresh(self) -> dict[str, int]:
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(referral_counts_query())).all()
            self._counts = {str(status): int(n) for status, n in rows if status is not None}
        except Exception as exc:  # the gauge must never break collection
            logger.warning("referral counts unavailable: %s", type(exc).__name__)
            self._counts = {}  # unknown rather than stale
        self._fetched_at = self._clock()
        return dict(self._counts)

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        self._maybe_refresh()
        return [
            Observation(n, {"handoff.referral.status": status})
            for status, n in sorted(self._counts.items())
        ]

    def _maybe_refresh(self) -> None:
        loop = self._loop
        if not self.stale() or loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            # Collected on the loop's own thread: waiting would deadlock, and a query left
            # running could outlive the loop with its transaction open. Answer from cache.
            return
        with self._lock:
            if self._pending is None or self._pending.done():
                try:
                    self._pending = asyncio.run_coroutine_threadsafe(self.refresh(), loop)
                except RuntimeError:  # the loop closed meanwhile (shutdown)
                    return
            pending = self._pending
        with contextlib.suppress(
            concurrent.futures.TimeoutError, concurrent.futures.CancelledError
        ):
            pending.result(timeout=self._wait)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# --- the app's telemetry -------------------------------------------------------------------


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    referral_max_age: float = 30.0
    engines: list[AsyncEngine] = field(default_factory=list)
    referrals: list[ReferralCounts] = field(default_factory=list)
    # Statement spans cost ~10 % of a read: they are made only once something can receive
    # them (an exporter); request spans too, unless the caller sent trace context.
    traced_engines: list[AsyncEngine] = field(default_factory=list)
    exporting: bool = False

    def __post_init__(self) -> None:
        meter = self.meter_provider.get_meter("handoff", __version__)
        self.requests = meter.create_counter(
            "handoff.http.server.requests",
            unit="{request}",
            description="HTTP requests served, by method, route template and status.",
        )
        self.duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP requests, by method, route template and status.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        meter.create_observable_gauge(
            "handoff.referrals",
            callbacks=[self._observe_referrals],
            unit="{referral}",
            description="Referrals (Task resources) per status; the same value on every replica.",
        )
        meter.create_observable_gauge(
            "db.client.connection.count",
            callbacks=[self._observe_pool_use],
            unit="{connection}",
            description="Database connections of this replica's pool, used or idle.",
        )
        meter.create_observable_gauge(
            "db.client.connection.max",
            callbacks=[self._observe_pool_max],
            unit="{connection}",
            description="Most connections this replica's pool may open (size + overflow).",
        )
        meter.create_observable_gauge(
            "handoff.db.pool.size",
            callbacks=[self._observe_pool_size],
            unit="{connection}",
            description="Connections the pool keeps open (HANDOFF_DB_POOL_SIZE).",
        )

    # exporters ------------------------------------------------------------------------------

    def add_span_exporter(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        """Export finished spans, redacted, through ``exporter``."""
        inner = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.tracer_provider.add_span_processor(RedactingSpanProcessor(inner))
        self.exporting = True
        for engine in self.engines:
            self._trace_statements(engine)

    def add_metric_reader(self, reader: MetricReader) -> None:
        self.meter_provider.add_metric_reader(reader)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    # instrumentation ------------------------------------------------------------------------

    def instrument_engine(self, engine: AsyncEngine) -> None:
        """Pool and referral metrics now; statement spans once there is an exporter."""
        if any(e is engine for e in self.engines):
            return
        self.engines.append(engine)
        self.referrals.append(ReferralCounts(engine, max_age=self.referral_max_age))
        if self.exporting:
            self._trace_statements(engine)

    def _trace_statements(self, engine: AsyncEngine) -> None:
        """Trace statements (text with placeholders only: parameters are never attached)."""
        if any(e is engine for e in self.traced_engines):
            return
        tracer = self.tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
        # The instrumentation's own pool counter would duplicate the pool gauges: discard it.
        unused = NoOpMeterProvider().get_meter("unused").create_up_down_counter("unused")
        EngineTracer(  # type: ignore[no-untyped-call]
            tracer, engine.sync_engine, unused, enable_commenter=False
        )
        # The hottest statements run on the asyncpg connection itself (storage.driver), out
        # of the instrumentation's sight: the same span for each, from there.
        database = engine.url.database or ""

        def statement_span(sql: str) -> AbstractContextManager[Any]:
            return tracer.start_as_current_span(
                f"{sql.split(None, 1)[0]} {database}".strip(),
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system": engine.dialect.name,
                    "db.name": database,
                    "db.statement": sql,
                },
            )

        driver.statement_spans[engine.sync_engine] = statement_span
        self.traced_engines.append(engine)

    def instrument_httpx_client(self, client: httpx.AsyncClient | httpx.Client) -> None:
        is_async = isinstance(client, httpx.AsyncClient)
        hook = _httpx_request_hook if is_async else _httpx_sync_request_hook
        HTTPXClientInstrumentor.instrument_client(
            client,
            tracer_provider=self.tracer_provider,
            meter_provider=NoOpMeterProvider(),
            request_hook=hook,
        )

    # request metrics ------------------------------------------------------------------------

    def record_request(
        self, *, method: str, route: str | None, status: int, seconds: float
    ) -> None:
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method if method in _METHODS else "_OTHER",
            "http.response.status_code": status,
        }
        if route:
            attributes["http.route"] = route
        self.requests.add(1, attributes)
        self.duration.record(seconds, attributes)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        for counts in self.referrals:
            counts.bind_loop(loop)

    # gauges ---------------------------------------------------------------------------------

    def _observe_referrals(self, options: CallbackOptions) -> Iterable[Observation]:
        # One engine per app in production; the last one instrumented is the app's.
        return self.referrals[-1].observe(options) if self.referrals else []

    def _pools(self) -> Iterable[tuple[str, Any]]:
        for engine in self.engines:
            yield engine.dialect.name, engine.sync_engine.pool

    def _observe_pool_use(self, _options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for name, pool in self._pools():
            used, idle = _call(pool, "checkedout"), _call(pool, "checkedin")
            if used is not None:
                out.append(Observation(used, _pool_attrs(name, "used")))
            if idle is not None:
                out.append(Observation(idle, _pool_attrs(name, "idle")))
        return out

    def _observe_pool_max(self, _options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for name, pool in self._pools():
            size = _call(pool, "size")
            overflow = getattr(pool, "_max_overflow", 0)
            if size is not None and isinstance(overflow, int):
                # A negative max_overflow means "no limit": report the pool size alone.
                out.append(Observation(size + max(overflow, 0), _pool_attrs(name)))
        return out

    def _observe_pool_size(self, _options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for name, pool in self._pools():
            size = _call(pool, "size")
            if size is not None:
                out.append(Observation(size, _pool_attrs(name)))
        return out


def _call(obj: Any, method: str) -> int | None:
    fn = getattr(obj, method, None)
    if not callable(fn):
        return None
    value = fn()
    return value if isinstance(value, int) else None


def _pool_attrs(name: str, state: str | None = None) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {"db.client.connection.pool.name": f"{SERVICE_NAME}-{name}"}
    if state:
        attrs["db.client.connection.state"] = state
    return attrs


class ServerSpans:
    """A server span per request (OpenTelemetry's ASGI middleware) when it can be of use: an
    exporter is configured, or the caller sent W3C trace context (``traceparent``), whose
    trace id the logs then carry. Otherwise the request goes straight through: making a span
    nobody receives cost ~15 % of a read's CPU."""

    def __init__(self, app: ASGIApp, /, *, telemetry: Telemetry, **otel: Any) -> None:
        self.app = app
        self.traced = OpenTelemetryMiddleware(app, **otel)
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.telemetry.exporting or _has_trace_context(scope):
            await self.traced(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _has_trace_context(scope: Scope) -> bool:
    return any(name == b"traceparent" for name, _ in scope.get("headers", ()))


class RequestMetricsMiddleware:
    """Counts requests and their duration per route template and status (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.telemetry.bind_loop(asyncio.get_running_loop())
        token = _current.set(self.telemetry)
        started = time.perf_counter()
        status: int | None = None

        method = str(scope.get("method", ""))

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # Routed by now; the server span ends with the response body, so name it here.
                _name_server_span(method, route_template(scope))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except asyncio.CancelledError:
            status = status or 499  # the client went away
            raise
        except Exception:
            status = status or 500
            raise
        finally:
            _current.reset(token)
            route = route_template(scope)
            self.telemetry.record_request(
                method=method,
                route=route,
                status=status or 500,
                seconds=time.perf_counter() - started,
            )


@contextlib.contextmanager
def workflow_span(
    name: str,
    *,
    resource_type: str,
    interaction: str,
    resource_id: str | None = None,
    search_params: Iterable[str] = (),
) -> Iterator[Span]:
    """One span around a workflow step (``workflow.open_referral``), a child of the request's.

    Its attributes are fixed by this signature: resource type, id, interaction, search parameter
    names, and on exit the outcome (``success`` or the exception's type, never its message).
    Outside a request, or with telemetry off, it records nothing.
    """
    telemetry = _current.get()
    if telemetry is None:
        yield INVALID_SPAN
        return
    attributes: dict[str, AttributeValue] = {
        "handoff.resource_type": resource_type,
        "handoff.interaction": interaction,
    }
    if resource_id:
        attributes["handoff.resource_id"] = resource_id
    names = safe_names(search_params)
    if names:
        attributes["handoff.search_params"] = names
    tracer = telemetry.tracer_provider.get_tracer("handoff", __version__)
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("handoff.outcome", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise
        span.set_attribute("handoff.outcome", "success")


def traced_workflow(
    name: str, *, resource_type: str, interaction: str, id_position: int | None = None
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """A use case run inside ``workflow_span(name, ...)``; ``id_position``: which positional
    argument is the resource id (e.g. 1 in ``get_referral(ctx, sr_id)``)."""

    def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(function)
        async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            if _current.get() is None:  # no telemetry: no span, no cost
                return await function(*args, **kwargs)
            resource_id = args[id_position] if id_position is not None else None
            with workflow_span(
                name,
                resource_type=resource_type,
                interaction=interaction,
                resource_id=resource_id if isinstance(resource_id, str) else None,
            ):
                return await function(*args, **kwargs)

        return traced

    return decorate


# --- installation --------------------------------------------------------------------------


def sdk_disabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def otlp_configured(signal: str, environ: Mapping[str, str] | None = None) -> bool:
    """OTLP export of ``signal`` (traces, metrics) is wanted: an endpoint is set and the
    ``OTEL_<SIGNAL>_EXPORTER`` selector (default ``otlp``) names it."""
    env = os.environ if environ is None else environ
    selected = env.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower()
    if "otlp" not in {s.strip() for s in selected.split(",")}:
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def _resource() -> Resource:
    attributes: dict[str, AttributeValue] = {"service.version": __version__}
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over the default name.
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = SERVICE_NAME
    return Resource.create(attributes)


def _otlp_exporters(exporting: bool) -> tuple[Sequence[SpanExporter], Sequence[MetricReader]]:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
    if exporting and protocol not in ("http/protobuf", ""):
        logger.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is supported", protocol)
    spans: list[SpanExporter] = []
    readers: list[MetricReader] = []
    if otlp_configured("traces"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        spans.append(OTLPSpanExporter())
    if otlp_configured("metrics"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    return spans, readers


def install_telemetry(app: FastAPI, *, settings: Settings, engine: AsyncEngine | None) -> None:
    """Instrument ``app`` (call in create_app, after the other middleware: it goes outside).

    ``engine`` may be None when the lifespan creates it: then call ``instrument_engine`` there.
    With OTEL_SDK_DISABLED=true nothing is instrumented and ``app.state.telemetry`` is None.
    """
    if sdk_disabled():
        app.state.telemetry = None
        return
    exporting = otlp_configured("traces") or otlp_configured("metrics")
    span_exporters, readers = _otlp_exporters(exporting)
    resource = _resource()
    telemetry = Telemetry(
        # Flush at interpreter exit only when something is exported (no atexit hooks in tests).
        tracer_provider=TracerProvider(resource=resource, shutdown_on_exit=bool(span_exporters)),
        meter_provider=MeterProvider(
            metric_readers=readers, resource=resource, shutdown_on_exit=bool(readers)
        ),
        referral_max_age=settings.referral_metrics_max_age,
    )
    for exporter in span_exporters:
        telemetry.add_span_exporter(exporter)
    app.state.telemetry = telemetry

    excluded = ",".join(
        filter(None, [*PROBE_URLS, os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "")])
    )
    app.add_middleware(RequestMetricsMiddleware, telemetry=telemetry)
    # The plain ASGI middleware rather than FastAPIInstrumentor: that one matches the request
    # against every route a second time to name the span (~1 ms here with 200 routes);
    # RequestMetricsMiddleware names it from the route the router already matched.
    app.add_middleware(
        ServerSpans,
        telemetry=telemetry,
        excluded_urls=excluded,
        default_span_details=_initial_span_details,
        server_request_hook=_server_request_hook,
        tracer_provider=telemetry.tracer_provider,
        # Request metrics come from RequestMetricsMiddleware: route templates only, and no
        # raw path for requests that matched no route.
        meter_provider=NoOpMeterProvider(),
        exclude_spans=["receive", "send"],
        # Headers are not captured unless OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* asks;
        # if someone does, credentials are masked.
        http_capture_headers_sanitize_fields=list(SANITIZED_HEADERS),
    )
    if engine is not None:
        telemetry.instrument_engine(engine)


def instrument_engine(app: FastAPI, engine: AsyncEngine) -> None:
    """Trace an engine the lifespan created (no-op when telemetry is off or already done)."""
    telemetry: Telemetry | None = getattr(app.state, "telemetry", None)
    if telemetry is not None:
        telemetry.instrument_engine(engine)


def instrument_httpx_client(app: FastAPI, client: httpx.AsyncClient | httpx.Client) -> None:
    """Trace an outbound client (JWKS fetches); its URLs keep parameter names only."""
    telemetry: Telemetry | None = getattr(app.state, "telemetry", None)
    if telemetry is not None:
        telemetry.instrument_httpx_client(client)
