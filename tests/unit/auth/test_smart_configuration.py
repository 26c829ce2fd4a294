from __future__ import annotations

import pytest

from service.auth.smart_configuration import smart_configuration

BASE = "https://handoff.example.org/fhir"


def test_backend_services_document() -> None:
    document = smart_configuration(
        base_url=BASE,
        token_url="https://handoff.example.org/auth/token",
        jwks_url="https://handoff.example.org/auth/jwks",
        scopes_supported=["system/Task.cruds", "system/ServiceRequest.rs"],
    )
    assert document["token_endpoint"] == "https://handoff.example.org/auth/token"
    assert document["jwks_uri"] == "https://handoff.example.org/auth/jwks"
    assert document["issuer"] == BASE
    assert document["grant_types_supported"] == ["client_credentials"]
    assert document["token_endpoint_auth_methods_supported"] == [
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
    ]
    assert document["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert document["scopes_supported"] == ["system/Task.cruds", "system/ServiceRequest.rs"]
    assert set(document["capabilities"]) == {
        "client-confidential-asymmetric",
        "client-confidential-symmetric",
        "permission-v2",
        "permission-v1",
    }
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_endpoint" not in document
    assert "introspection_endpoint" not in document


def test_optional_endpoints_and_issuer() -> None:
    document = smart_configuration(
        base_url=BASE,
        token_url=f"{BASE}/token",
        jwks_url=f"{BASE}/jwks",
        scopes_supported=[],
        issuer="https://handoff.example.org",
        introspection_url="https://handoff.example.org/auth/introspect",
    )
    assert document["issuer"] == "https://handoff.example.org"
    assert document["introspection_endpoint"] == "https://handoff.example.org/auth/introspect"


@pytest.mark.parametrize("token_url", ["/auth/token", "auth/token", "https://", "mailto:x@y"])
def test_relative_urls_are_refused(token_url: str) -> None:
    with pytest.raises(ValueError, match="token_url"):
        smart_configuration(
            base_url=BASE, token_url=token_url, jwks_url=f"{BASE}/jwks", scopes_supported=[]
        )
