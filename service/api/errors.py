"""Every error becomes a FHIR OperationOutcome here, and only here.

500s never echo exception text (it may hold health data): they carry the request id, which
the log line of the failure also carries.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.domain.text import nul_message
from service.errors import (
    AuthenticationError,
    InsufficientScopeError,
    Issue,
    ServiceError,
    not_json,
)
from service.fhir.outcome import operation_outcome
from service.request_context import request_id_var
from service.storage.failures import classify

logger = logging.getLogger("handoff.errors")

_HTTP_ISSUE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
}


def outcome_response(
    status: int,
    issues: list[Issue] | tuple[Issue, ...],
    headers: dict[str, str] | None = None,
    *,
    request_id: str | None = None,
) -> Response:
    from service.api.responses import fhir_json

    request_id = request_id or request_id_var.get()
    body = operation_outcome(list(issues), request_id=request_id)
    out_headers = dict(headers or {})
    if request_id:
        out_headers.setdefault("X-Request-ID", request_id)
    return fhir_json(body, status, out_headers)


def _www_authenticate(exc: ServiceError) -> dict[str, str]:
    headers = dict(exc.headers)
    if isinstance(exc, AuthenticationError):
        desc = exc.diagnostics.replace('"', "'")
        headers.setdefault(
            "WWW-Authenticate", f'Bearer error="invalid_token", error_description="{desc}"'
        )
    elif isinstance(exc, InsufficientScopeError):
        desc = exc.diagnostics.replace('"', "'")
        headers.setdefault(
            "WWW-Authenticate", f'Bearer error="insufficient_scope", error_description="{desc}"'
        )
    return headers


_PUBLIC = ("/fhir/metadata", "/fhir/.well-known")


async def handle_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        logger.error("service error %s: %s", exc.status, type(exc).__name__)
    path = request.url.path
    if (
        exc.status in (401, 403)
        and getattr(request.state, "audit_ctx", None) is None
        and path.startswith(("/fhir", "/v1"))
        and not path.startswith(_PUBLIC)
    ):
        # Refused before we knew who was calling: still audited.
        from service.workflows.audit import record_unauthenticated

        try:
            await record_unauthenticated(
                request.app.state.engine,
                request_id=getattr(request.state, "request_id", ""),
                path=path,
                status=exc.status,
                reason=type(exc).__name__,
            )
        except Exception:  # the refusal must still be answered if auditing fails
            logger.error("could not record the audit event of a refused request")
    return outcome_response(exc.status, exc.issues, _www_authenticate(exc))


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included routers
        yield from _routes(included.routes) if included is not None else (route,)


def allowed_methods(request: Request) -> str:
    """The ``Allow`` of a 405: every method some route serves at this path. Starlette names
    only the methods of the one route it tried, and FastAPI serves each method of a path as
    its own route. A literal path (``/fhir/Task/_search``) is not also a resource id."""
    path = request.url.path
    matching = [
        r
        for r in _routes(request.app.routes)
        if getattr(r, "methods", None) and r.path_regex.match(path)
    ]
    literal = [r for r in matching if r.path == path]
    methods = {m for r in (literal or matching) for m in r.methods}
    return ", ".join(sorted(methods))


# A path FastAPI matches as a resource id ("/fhir/Task/_search" or "/fhir/Patient/$match"
# against PUT /fhir/{type}/{id}): the id pattern refuses it, but what is wrong is the method.


def _misdirected(request: Request) -> Response | None:
    path = request.url.path
    parts = path.split("/")
    if len(parts) != 4 or parts[1] != "fhir":
        return None
    rtype, operation = parts[2], parts[3]
    if operation == "_search":
        hint = f"search with GET /fhir/{rtype}?name=value or POST /fhir/{rtype}/_search"
    elif operation == "_history":
        hint = f"read the type's history with GET {path}"
    elif operation.startswith("$") and any(
        r.path == path for r in _routes(request.app.routes) if getattr(r, "methods", None)
    ):
        # A type-level operation ($match, $merge, $status) asked with a method it does not take.
        hint = f"{operation} takes {allowed_methods(request)}"
    else:
        return None
    text = f"{request.method} is not supported on {path}; {hint}"
    return outcome_response(
        405,
        [Issue("error", "not-supported", text)],
        {"Allow": allowed_methods(request)},
    )


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    """Malformed requests. On the JMS API (/v1) a body that breaks the documented rules is a
    422 listing every problem; elsewhere (FHIR parameters) a 400. A body that is not JSON at
    all is a 400 everywhere: there are no rules to list."""
    assert isinstance(exc, RequestValidationError)
    if misdirected := _misdirected(request):
        return misdirected
    errors = exc.errors()
    unparsed = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if unparsed is not None:
        loc = unparsed.get("loc", ())
        reason = (unparsed.get("ctx") or {}).get("error", "JSON decode error")
        refusal = not_json(reason, loc[-1] if len(loc) > 1 else None)
        return outcome_response(refusal.status, refusal.issues)
    json_api = request.url.path.startswith("/v1")
    issues = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "request"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") == "missing":
            where, message = "body", "the request has no body; send the JSON that /docs shows"
        code = (
            "required" if err.get("type") == "missing" else ("invalid" if not json_api else "value")
        )
        issues.append(Issue("error", code, f"{where}: {message}", (where,)))
    status = 422 if json_api else 400
    return outcome_response(status, issues or [Issue("error", "invalid", "Invalid request")])


async def handle_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers: dict[str, Any] = dict(exc.headers or {})
    if status == 404:
        text = f"Nothing is served at {request.url.path}; see /fhir/metadata and /docs"
    elif status == 405:
        text = f"{request.method} is not supported on {request.url.path}"
        headers["Allow"] = allowed_methods(request)
    elif status == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI's words when a JSON body is not even text (e.g. not UTF-8).
        text = "The body could not be read: send JSON encoded as UTF-8"
    else:
        text = str(exc.detail)
    return outcome_response(
        status, [Issue("error", _HTTP_ISSUE.get(status, "processing"), text)], headers
    )


def _safe_traceback(exc: BaseException) -> str:
    """Where it failed, without the exception's message (which may quote health data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/service/" in f.filename]
    chosen = [*ours[-6:], frames[-1]] if frames else []
    return " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(chosen)
    )


def _too_costly(request: Request, refusal: str) -> str:
    if refusal == "timeout":
        limit = request.app.state.settings.db_statement_timeout_ms
        return (
            f"This request is too expensive: a database statement ran past the limit of {limit} "
            "ms (HANDOFF_DB_STATEMENT_TIMEOUT_MS) and was stopped. Narrow it (more selective "
            "parameters, a smaller _count, fewer _include, no _total=accurate): sent again "
            "unchanged it would be stopped again"
        )
    return (
        "This request is too large for the database to run as one statement: narrow it "
        "(fewer parameters, fewer values)"
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # This handler runs outside the request-id middleware: read the id from the request state.
    request_id = getattr(request.state, "request_id", None)
    verdict = classify(exc)
    if verdict == "unstorable-text":
        return outcome_response(
            400, [Issue("error", "invalid", nul_message("a value"))], request_id=request_id
        )
    if verdict in ("timeout", "size"):
        logger.info("statement stopped: %s", verdict)
        return outcome_response(
            400,
            [Issue("error", "too-costly", _too_costly(request, verdict))],
            request_id=request_id,
        )
    if verdict == "unavailable":
        logger.warning("database unavailable: %s", type(exc).__name__)
        return outcome_response(
            503,
            [
                Issue(
                    "error",
                    "transient",
                    "The database is unavailable; retry shortly (see Retry-After)",
                )
            ],
            {"Retry-After": "5"},
            request_id=request_id,
        )
    if isinstance(exc, ClientDisconnect):
        # The client went away before sending its whole body (a load balancer timeout, a
        # killed process): nobody will read an answer, and it is not the server's fault.
        logger.info("client disconnected before sending the whole request")
        return outcome_response(
            400,
            [Issue("error", "incomplete", "The client disconnected before sending the request")],
            request_id=request_id,
        )
    # Never echo the exception: its text may hold health data. The request id links to the log.
    logger.error(
        "unhandled %s at %s",
        type(exc).__name__,
        _safe_traceback(exc),
        extra={"request_id": request_id},
    )
    return outcome_response(
        500,
        [
            Issue(
                "error",
                "exception",
                "An unexpected error occurred; report the request id "
                f"{request_id or '(none)'} to the operators",
            )
        ],
        request_id=request_id,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, handle_service_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected)
