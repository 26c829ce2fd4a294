"""The ``/.well-known/smart-configuration`` document (SMART App Launch 2.2, conformance §2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from service.auth.assertions import ASSERTION_ALGORITHMS

CAPABILITIES = (
    "client-confidential-asymmetric",
    "client-confidential-symmetric",
    "permission-v2",
    "permission-v1",
)


def smart_configuration(
    *,
    base_url: str,
    token_url: str,
    jwks_url: str,
    scopes_supported: Sequence[str],
    issuer: str | None = None,
    introspection_url: str | None = None,
    revocation_url: str | None = None,
) -> dict[str, Any]:
    """Discovery metadata for a backend-services (client_credentials) server.

    SMART requires every URL to be absolute. ``issuer`` defaults to ``base_url`` and must equal
    the ``iss`` of the tokens we sign. ``code_challenge_methods_supported`` is a REQUIRED field
    even without an authorization endpoint; it lists S256 and never ``plain``.
    """
    urls: dict[str, str | None] = {
        "base_url": base_url,
        "token_url": token_url,
        "jwks_url": jwks_url,
        "introspection_url": introspection_url,
        "revocation_url": revocation_url,
    }
    for name, url in urls.items():
        parts = urlsplit(url) if url is not None else None
        if parts is not None and (parts.scheme not in ("https", "http") or not parts.netloc):
            raise ValueError(f"{name} must be an absolute URL, got {url!r}")
    document: dict[str, Any] = {
        "issuer": issuer or base_url,
        "jwks_uri": jwks_url,
        "token_endpoint": token_url,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": list(scopes_supported),
        "capabilities": list(CAPABILITIES),
        "code_challenge_methods_supported": ["S256"],
    }
    if introspection_url is not None:
        document["introspection_endpoint"] = introspection_url
    if revocation_url is not None:
        document["revocation_endpoint"] = revocation_url
    return document
