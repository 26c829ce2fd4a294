"""The public base URL the client used, from the ASGI scope (links, token issuer/audience)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from service.api.responses import public_base
from service.settings import Settings


def request(
    headers: dict[str, str] | None = None,
    *,
    scheme: str = "http",
    client: str = "10.0.0.9",
    server: tuple[str, int | None] = ("10.0.0.1", 8000),
    root_path: str = "",
) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": scheme,
        "method": "GET",
        "path": "/fhir/Task",
        "root_path": root_path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (client, 40000),
        "server": server,
    }
    return Request(scope)


FORWARDED = {
    "host": "10.0.0.1:8000",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "handoff.example.org, inner.local",
    "x-forwarded-prefix": "/api/",
}


def settings(**over: Any) -> Settings:
    return Settings(_env_file=None, **over)  # type: ignore[call-arg]


def test_the_host_header_the_client_sent() -> None:
    assert public_base(request({"host": "h.example.org:8443"}), settings()) == (
        "http://h.example.org:8443"
    )


@pytest.mark.parametrize(
    ("server", "scheme", "expected"),
    [
        (("10.0.0.1", 8000), "http", "http://10.0.0.1:8000"),
        (("10.0.0.1", 80), "http", "http://10.0.0.1"),
        (("10.0.0.1", 443), "https", "https://10.0.0.1"),
    ],
)
def test_without_a_host_header_the_server_address(
    server: tuple[str, int], scheme: str, expected: str
) -> None:
    assert public_base(request(server=server, scheme=scheme), settings()) == expected


def test_forwarded_headers_only_from_a_trusted_proxy() -> None:
    assert public_base(request(FORWARDED), settings()) == "http://10.0.0.1:8000"
    assert public_base(request(FORWARDED), settings(trusted_proxies="10.0.0.8")) == (
        "http://10.0.0.1:8000"
    )
    for trusted in ("10.0.0.7, 10.0.0.9", "*"):
        assert public_base(request(FORWARDED), settings(trusted_proxies=trusted)) == (
            "https://handoff.example.org/api"
        )


def test_the_configured_url_wins_and_the_root_path_is_kept() -> None:
    assert public_base(request(FORWARDED), settings(public_base_url="https://x.org/")) == (
        "https://x.org"
    )
    assert public_base(request({"host": "h"}, root_path="/handoff/"), settings()) == (
        "http://h/handoff"
    )
