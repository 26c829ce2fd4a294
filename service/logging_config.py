"""JSON logs on stdout: one line per request and one per notable event.

Every line carries the request id and the trace id (when there is one). The formatter is an
allow-list: the message (with any query string reduced to parameter names), a fixed set of
structured fields, and for errors the exception TYPE and where it was raised, never its text.
Code must still never put health data in a log message; this is the second line of defence.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.redaction import query_names, redact_text, safe_traceback
from service.request_context import request_id_var
from service.route_template import route_template
from service.settings import Settings

ACCESS_LOGGER = "handoff.access"
PROBES = frozenset({"/healthz", "/readyz"})

# Structured fields a log call may add through ``extra=``; anything else is dropped.
ALLOWED_FIELDS = (
    "event",
    "method",
    "route",
    "status",
    "duration_ms",
    "request_id",
    "client_id",
    "params",
    "resource_type",
    "resource_id",
    "interaction",
    "outcome",
)
# Libraries that log URLs or SQL with its parameters below WARNING (sqlalchemy.engine at INFO,
# aiosqlite at DEBUG, httpx at INFO): only their warnings get through, whatever the level.
QUIET_LOGGERS = (
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "aiosqlite",
    "asyncpg",
    "httpx",
    "httpcore",
    "asyncio",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key in ALLOWED_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if "request_id" not in out:
            out["request_id"] = request_id_var.get()
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            out["trace_id"] = trace.format_trace_id(context.trace_id)
            out["span_id"] = trace.format_span_id(context.span_id)
        else:
            out["trace_id"] = None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["error"] = type(exc).__name__
            out["where"] = safe_traceback(exc)
        return orjson.dumps(out, default=str).decode()


class StdoutHandler(logging.Handler):
    """Writes to the current ``sys.stdout`` (or a given stream), one line per record."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = self._stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """JSON on stdout at HANDOFF_LOG_LEVEL for the service and uvicorn. Idempotent.

    Only handlers this function installed are replaced, so a test harness's capture survives.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdoutHandler):
            root.removeHandler(handler)
    handler = StdoutHandler(stream)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # uvicorn configured its own plain-text handlers before loading the app: route its
    # messages (start-up, shutdown, errors) through the JSON handler instead.
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(settings.log_level)
    access = logging.getLogger("uvicorn.access")  # the access log is ours (below)
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


class AccessLogMiddleware:
    """One line per request (pure ASGI): method, route template, status, duration, ids.

    Add it after RequestIdMiddleware (so it is outside it and sees the final status, including
    the 500s that middleware answers). Probes log at DEBUG while they succeed.
    """

    def __init__(self, app: ASGIApp, *, logger_name: str = ACCESS_LOGGER) -> None:
        self.app = app
        self.logger = logging.getLogger(logger_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
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
            self._log(scope, status or 500, time.perf_counter() - started)

    def _log(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        if status >= 500:
            level = logging.WARNING
        elif route in PROBES and status < 400:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        method = str(scope.get("method", ""))
        state = scope.get("state") or {}
        client_id = getattr(state.get("principal"), "client_id", None)
        query = scope.get("query_string", b"").decode("latin-1")
        duration_ms = round(seconds * 1000, 1)
        self.logger.log(
            level,
            "%s %s %s %.1fms",
            method,
            route or "(no route)",
            status,
            duration_ms,
            extra={
                "event": "request",
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "request_id": state.get("request_id"),
                "client_id": client_id if isinstance(client_id, str) else None,
                "params": query_names(query) if query else None,
            },
        )
