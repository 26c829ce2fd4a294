"""ASGI middleware: request ids, URL, header and body size limits, content negotiation.

Pure ASGI (not BaseHTTPMiddleware) so that bodies stream and nothing is buffered twice.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    HeadersTooLargeError,
    Issue,
    NotAcceptableError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
    UriTooLongError,
)
from service.request_context import request_id_var

_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json-patch+json")
_XML_HINTS = ("xml",)
_JSON_FORMATS = {"json", "application/json", "application/fhir+json"}


_HEADERS_KEY = "handoff.headers"


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name, decoded once per request (three middlewares
    ask)."""
    found: dict[str, str] | None = scope.get(_HEADERS_KEY)
    if found is None:
        found = scope[_HEADERS_KEY] = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
    return found


def _declares_more_than(length: str, limit: int) -> bool:
    """A Content-Length of ASCII digits (isdigit also takes "²", which int refuses) above
    ``limit``, read without converting thousands of digits."""
    if not (length.isascii() and length.isdigit()):
        return False  # not a length: the body is counted as it arrives
    digits = length.lstrip("0")
    return len(digits) > 18 or int(digits or "0") > limit


async def _send_error(send: Send, exc: ServiceError) -> None:
    from service.api.errors import outcome_response

    response = outcome_response(exc.status, exc.issues, exc.headers)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _headers(scope).get("x-request-id", "")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answer here rather than let Starlette's ServerErrorMiddleware re-raise: the server
            # would then log the exception text, which may quote health data.
            from starlette.requests import Request

            from service.api.errors import handle_unexpected

            if started:
                raise
            response = await handle_unexpected(Request(scope), exc)
            await response(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class RequestHeadLimitMiddleware:
    """414 for a URL, 431 for headers, over the limits: a long URL is a search of many
    parameters, each of them work for the database, and every header is held in memory for the
    whole request. (The server has parsed them by now; the ingress, or uvicorn's h11 limit,
    bounds what it parses. This answers what a client can act on.)"""

    def __init__(self, app: ASGIApp, *, max_url_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._check(scope)
            if problem is not None:
                await _send_error(send, problem)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> ServiceError | None:
        path: bytes = scope.get("raw_path") or str(scope.get("path", "")).encode()
        query: bytes = scope.get("query_string", b"")
        url = len(path) + (len(query) + 1 if query else 0)
        if url > self.max_url_bytes:
            search = "POST /fhir/{type}/_search with the parameters as a form body"
            return UriTooLongError(
                f"The request URL is {url} bytes long; the limit is {self.max_url_bytes} "
                f"(HANDOFF_MAX_URL_BYTES): send a long search as {search}"
            )
        size = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
        if size > self.max_header_bytes:
            return HeadersTooLargeError(
                f"The request headers are {size} bytes long; the limit is "
                f"{self.max_header_bytes} (HANDOFF_MAX_HEADER_BYTES)"
            )
        return None


class BodyLimitMiddleware:
    """413 for bodies over the limit, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        length = headers.get("content-length")
        if length and _declares_more_than(length, self.max_bytes):
            await _send_error(send, self._too_large())
            return
        if length is None and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body at all (a GET): nothing to watch
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, self._too_large())

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than the limit of {self.max_bytes} bytes "
            "(HANDOFF_MAX_BODY_BYTES); split the Bundle or send smaller attachments"
        )


class _BodyTooLarge(Exception):
    pass


# The one /v1 endpoint whose body is not JSON (HL7 v2 ADT, api/routes/v1_hl7v2.py).
HL7_V2_PATH = "/v1/hl7v2/adt"


class ContentNegotiationMiddleware:
    """Under /fhir: JSON only; XML (by _format, Accept or Content-Type) gets 406/415. Under /v1:
    a body must be declared JSON (415 otherwise: FastAPI would read a form-encoded or text
    body as no body at all, and answer that fields are missing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", "")) if scope["type"] == "http" else ""
        try:
            if path.startswith("/fhir"):
                self._check(scope)
            elif path.startswith("/v1"):
                self._check_jms(scope)
        except ServiceError as exc:
            await _send_error(send, exc)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _check_jms(scope: Scope) -> None:
        if scope.get("method", "GET") not in ("POST", "PUT", "PATCH"):
            return
        headers = _headers(scope)
        if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
            return  # no body: the route says whether it needs one
        ctype = _content_type(headers)
        if scope.get("path") == HL7_V2_PATH:
            return  # HL7 v2, not JSON: the route checks it once the caller is known
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise UnsupportedMediaTypeError(
                f"Content-Type {ctype or '(none)'} is not supported here: send the body as JSON "
                "with Content-Type: application/json"
            )

    @staticmethod
    def _check(scope: Scope) -> None:
        headers = _headers(scope)
        query: list[tuple[str, Any]] = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        fmt = next((v for k, v in query if k == "_format"), None)
        if fmt is not None:
            if fmt.split(";")[0].strip() not in _JSON_FORMATS:
                raise NotAcceptableError(
                    f"_format={fmt} is not supported: this server speaks FHIR JSON only "
                    "(_format=json or application/fhir+json)"
                )
        else:
            accept = headers.get("accept", "")
            if accept and not _accepts_json(accept):
                raise NotAcceptableError(
                    f"Cannot produce {accept}: this server returns application/fhir+json only"
                )
        method = scope.get("method", "GET")
        if method in ("POST", "PUT", "PATCH"):
            ctype = _content_type(headers)
            path = str(scope.get("path", ""))
            if path.endswith("/_search") and method == "POST":
                if ctype and ctype != "application/x-www-form-urlencoded":
                    raise UnsupportedMediaTypeError(
                        "POST _search takes application/x-www-form-urlencoded parameters"
                    )
                return
            if ctype and ctype not in _JSON_TYPES and not ctype.endswith("+json"):
                raise UnsupportedMediaTypeError(
                    f"Content-Type {ctype} is not supported: send application/fhir+json "
                    "(or application/json)"
                )


def _content_type(headers: dict[str, str]) -> str:
    """The media type of the body, without parameters, in lower case ("" if undeclared)."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _accepts_json(accept: str) -> bool:
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", "") or "json" in media:
            return True
        if "html" in media:  # a browser opening a link: it takes what we have
            return True
    return False


__all__ = [
    "BodyLimitMiddleware",
    "ContentNegotiationMiddleware",
    "Issue",
    "RequestHeadLimitMiddleware",
    "RequestIdMiddleware",
]
