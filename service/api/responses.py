"""FHIR JSON responses: media type, ETag/Last-Modified/Location, Prefer handling."""

from __future__ import annotations

import functools
from email.utils import format_datetime
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response
from starlette.types import Scope

from service.errors import Issue
from service.fhir.outcome import operation_outcome
from service.settings import Settings
from service.storage.repository import StoredResource

FHIR_JSON = "application/fhir+json; charset=utf-8"


REDISCLOSURE_NOTICE = (
    "42 CFR Part 2: this response contains substance use disorder records protected by federal "
    "confidentiality rules; further disclosure is prohibited unless the patient's written "
    "consent or 42 CFR part 2 permits it (labelled resources carry meta.security NORDSCLCD)."
)


class FhirResponse(Response):
    media_type = FHIR_JSON


def _notice(body: bytes, headers: dict[str, str] | None) -> dict[str, str] | None:
    """Responses carrying Part 2 data get the redisclosure notice (labels are in the data)."""
    if b'"42CFRPart2"' not in body:
        return headers
    return {**(headers or {}), "X-Redisclosure-Notice": REDISCLOSURE_NOTICE}


def fhir_json(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = content if isinstance(content, bytes) else orjson.dumps(content)
    return FhirResponse(content=body, status_code=status_code, headers=_notice(body, headers))


def version_headers(stored: StoredResource) -> dict[str, str]:
    return {
        "ETag": f'W/"{stored.version_id}"',
        "Last-Modified": format_datetime(stored.last_updated, usegmt=True),
    }


def prefer_return(request: Request) -> str:
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() == "return":
            return value.strip().strip('"')
    return "representation"


def prefer_strict(request: Request) -> bool:
    for part in request.headers.get("prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() == "handling":
            return value.strip() == "strict"
    return False


def resource_response(
    request: Request,
    stored: StoredResource,
    *,
    base_url: str,
    status_code: int = 200,
    location: bool = False,
    issues: list[Issue] | None = None,
) -> Response:
    headers = version_headers(stored)
    if location:
        headers["Location"] = (
            f"{base_url}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
        )
    mode = prefer_return(request)
    if mode == "minimal":
        return Response(status_code=status_code, headers=headers)
    if mode == "OperationOutcome":
        verb = "Created" if status_code == 201 else "Stored"
        text = f"{verb} {stored.resource_type}/{stored.id} version {stored.version_id}"
        return fhir_json(
            operation_outcome([Issue("information", "informational", text), *(issues or [])]),
            status_code,
            headers,
        )
    assert stored.raw is not None
    body = stored.raw.encode()
    return FhirResponse(content=body, status_code=status_code, headers=_notice(body, headers))


def _first(value: str | None) -> str | None:
    return value.split(",")[0].strip() if value else None


@functools.lru_cache(maxsize=8)
def _trusted_hosts(setting: str) -> frozenset[str]:
    return frozenset(t.strip() for t in setting.split(",") if t.strip())


def _raw_header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def public_base(request: Request, settings: Settings) -> str:
    """The service root the client used, without trailing slash (e.g. https://h.example.org).

    HANDOFF_PUBLIC_BASE_URL wins; otherwise X-Forwarded-Proto/Host/Prefix from a trusted proxy;
    otherwise the request's own scheme and Host.
    """
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    scope = request.scope
    # Asked three times per request (token issuer, audience, links): worked out once, from
    # the ASGI scope (Starlette's URL object parsed the whole URL for its scheme: ~4 % of a
    # read).
    known: str | None = scope.get(_BASE_KEY)
    if known is not None:
        return known
    scheme = scope.get("scheme", "http")
    host = _raw_header(scope, b"host")
    if not host:
        server = scope.get("server")  # as Starlette's URL does: no default port
        default = {"http": 80, "https": 443}.get(scheme)
        host = (
            "localhost"
            if not server
            else server[0]
            if server[1] in (None, default)
            else f"{server[0]}:{server[1]}"
        )
    prefix = ""
    trusted = _trusted_hosts(settings.trusted_proxies)
    client = scope.get("client")
    if "*" in trusted or (client is not None and client[0] in trusted):
        scheme = _first(_raw_header(scope, b"x-forwarded-proto")) or scheme
        host = _first(_raw_header(scope, b"x-forwarded-host")) or host
        prefix = (_first(_raw_header(scope, b"x-forwarded-prefix")) or "").rstrip("/")
    root = scope.get("root_path", "").rstrip("/")
    base = f"{scheme}://{host}{prefix}{root}"
    scope[_BASE_KEY] = base
    return base


_BASE_KEY = "handoff.public_base"


def fhir_base(request: Request, settings: Settings) -> str:
    return public_base(request, settings) + "/fhir"


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def token_base(request: Request, settings: Settings) -> str:
    """The service root as the access tokens it signs name it (issuer and audience).

    HANDOFF_PUBLIC_BASE_URL when set. Otherwise the request's root, except that this machine's
    own names (127.0.0.1, [::1], localhost) are all ``localhost``: one development server
    reached under two of them is one issuer, so a token got at http://127.0.0.1:8000 works
    at http://localhost:8000. (Links keep the name the client used.)"""
    base = public_base(request, settings)
    if settings.public_base_url:
        return base
    scheme, sep, rest = base.partition("://")
    authority, slash, path = rest.partition("/")
    if authority.startswith("["):
        host, _, port = authority.partition("]")
        host += "]"
    else:
        host, _, port = authority.partition(":")
        port = port and ":" + port
    if host.lower() not in _LOOPBACK_NAMES:
        return base
    return f"{scheme}{sep}localhost{port}{slash}{path}"
