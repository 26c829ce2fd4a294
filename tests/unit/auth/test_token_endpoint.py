from __future__ import annotations

import base64

import pytest

from service.auth.assertions import CLIENT_ASSERTION_TYPE
from service.auth.errors import (
    InvalidClientError,
    InvalidRequestOAuthError,
    OAuthError,
    UnsupportedGrantTypeError,
    oauth_error,
)
from service.auth.scopes import ScopeSet
from service.auth.token_endpoint import parse_token_request, token_response
from service.auth.tokens import IssuedToken
from tests.unit.auth.helpers import unsigned_jwt

ASSERTION = unsigned_jwt({"alg": "RS384"}, {"iss": "clinic", "sub": "clinic"}, "c2ln")


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def jwt_form(**extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": "system/Task.rs",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": ASSERTION,
        **extra,
    }


def test_private_key_jwt() -> None:
    request = parse_token_request(jwt_form(), authorization=None)
    assert request.auth_method == "private_key_jwt"
    assert request.client_id == "clinic"
    assert request.client_assertion == ASSERTION
    assert request.scope == "system/Task.rs"
    assert request.client_secret is None


def test_private_key_jwt_with_matching_client_id() -> None:
    assert parse_token_request(jwt_form(client_id="clinic"), authorization=None).client_id


def test_private_key_jwt_with_other_client_id() -> None:
    with pytest.raises(InvalidClientError):
        parse_token_request(jwt_form(client_id="other"), authorization=None)


def test_wrong_assertion_type() -> None:
    form = jwt_form(
        client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    )
    with pytest.raises(InvalidRequestOAuthError, match="client_assertion_type"):
        parse_token_request(form, authorization=None)


def test_client_secret_basic_url_decodes() -> None:
    form = {"grant_type": "client_credentials"}
    request = parse_token_request(form, authorization=basic("my%20client", "p%3Ass"))
    assert (request.auth_method, request.client_id, request.client_secret) == (
        "client_secret_basic",
        "my client",
        "p:ss",
    )
    assert request.scope == ""


def test_client_secret_post() -> None:
    form = {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"}
    request = parse_token_request(list(form.items()), authorization=None)
    assert (request.auth_method, request.client_id, request.client_secret) == (
        "client_secret_post",
        "c",
        "s",
    )


@pytest.mark.parametrize(
    ("form", "authorization", "error"),
    [
        ({}, None, InvalidRequestOAuthError),
        ({"grant_type": "authorization_code"}, None, UnsupportedGrantTypeError),
        ({"grant_type": "password"}, None, UnsupportedGrantTypeError),
        ({"grant_type": "client_credentials"}, None, InvalidClientError),
        ({"grant_type": "client_credentials"}, "Bearer abc", InvalidClientError),
        ({"grant_type": "client_credentials", "client_secret": "s"}, None, InvalidClientError),
        ({"grant_type": "client_credentials"}, "Basic !!!", InvalidClientError),
        (
            {"grant_type": "client_credentials"},
            "Basic " + base64.b64encode(b"nocolon").decode(),
            InvalidClientError,
        ),
        ({"grant_type": "client_credentials"}, basic("", "s"), InvalidClientError),
        (
            {"grant_type": "client_credentials", "client_secret": "s", "client_id": "c"},
            basic("c", "s"),
            InvalidRequestOAuthError,
        ),  # two methods
        (
            {"grant_type": "client_credentials", "client_id": "other"},
            basic("c", "s"),
            InvalidRequestOAuthError,
        ),
    ],
)
def test_bad_requests(
    form: dict[str, str], authorization: str | None, error: type[OAuthError]
) -> None:
    with pytest.raises(error):
        parse_token_request(form, authorization=authorization)


def test_two_methods_jwt_and_basic() -> None:
    with pytest.raises(InvalidRequestOAuthError, match="exactly one"):
        parse_token_request(jwt_form(), authorization=basic("clinic", "s"))


def test_repeated_parameter() -> None:
    pairs = [*jwt_form().items(), ("scope", "system/*.cruds")]
    with pytest.raises(InvalidRequestOAuthError, match="repeated"):
        parse_token_request(pairs, authorization=None)


def test_token_response() -> None:
    body = token_response(IssuedToken("tok", 300, "j"), ScopeSet.parse("system/Task.read"))
    assert body == {
        "access_token": "tok",
        "token_type": "bearer",
        "expires_in": 300,
        "scope": "system/Task.rs",
    }
    assert "refresh_token" not in body


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("invalid_request", 400),
        ("invalid_client", 401),
        ("invalid_grant", 400),
        ("unauthorized_client", 400),
        ("unsupported_grant_type", 400),
        ("invalid_scope", 400),
    ],
)
def test_oauth_error_codes(code: str, status: int) -> None:
    error = oauth_error(code, "why")  # type: ignore[arg-type]
    assert error.as_json() == {"error": code, "error_description": "why"}
    assert error.status == status
    assert error.issues[0].diagnostics == "why"
