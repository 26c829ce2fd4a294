"""POST /auth/token without the web framework: read the form, shape the response.

RFC 6749 §2.3 / §4.4 and SMART Backend Services: ``grant_type=client_credentials``; the client
authenticates with exactly one of ``private_key_jwt`` (client_assertion), ``client_secret_basic``
(Authorization header) or ``client_secret_post`` (form fields).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from service.auth.assertions import CLIENT_ASSERTION_TYPE, assertion_client_id
from service.auth.errors import (
    InvalidClientError,
    InvalidRequestOAuthError,
    UnsupportedGrantTypeError,
)
from service.auth.scopes import ScopeSet
from service.auth.tokens import IssuedToken

AuthMethod = Literal["private_key_jwt", "client_secret_basic", "client_secret_post"]
GRANT_TYPE = "client_credentials"
# Response headers RFC 6749 §5.1 requires on token responses.
TOKEN_RESPONSE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True)
class TokenRequest:
    client_id: str  # from an assertion: unverified until verify_client_assertion succeeds
    auth_method: AuthMethod
    scope: str
    client_secret: str | None = None
    client_assertion: str | None = None


def parse_token_request(
    form: Mapping[str, str] | Iterable[tuple[str, str]], *, authorization: str | None
) -> TokenRequest:
    """Validate the token request form; raises OAuthError with the RFC 6749 code.

    Pass the form as (name, value) pairs (Starlette's ``FormData.multi_items()``) so that a
    repeated parameter is refused, as RFC 6749 §3.2 requires.
    """
    fields = _single_valued(form.items() if isinstance(form, Mapping) else form)
    grant_type = fields.get("grant_type")
    if not grant_type:
        raise InvalidRequestOAuthError("grant_type is required")
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantTypeError(f"only grant_type={GRANT_TYPE} is supported")

    basic = authorization is not None and authorization[:6].lower() == "basic "
    methods = [
        name
        for name, present in (
            ("client_secret_basic", basic),
            ("client_secret_post", "client_secret" in fields),
            ("private_key_jwt", "client_assertion" in fields),
        )
        if present
    ]
    if len(methods) > 1:
        raise InvalidRequestOAuthError("use exactly one client authentication method")
    if not methods:
        raise InvalidClientError("client authentication is required")
    form_client_id = fields.get("client_id")
    scope = fields.get("scope", "")

    if methods[0] == "private_key_jwt":
        if fields.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise InvalidRequestOAuthError(f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
        assertion = fields["client_assertion"]
        client_id = assertion_client_id(assertion)
        if form_client_id is not None and form_client_id != client_id:
            raise InvalidClientError("client_id does not match the client_assertion issuer")
        return TokenRequest(client_id, "private_key_jwt", scope, client_assertion=assertion)

    if methods[0] == "client_secret_basic":
        assert authorization is not None
        client_id, secret = _basic_credentials(authorization)
        if form_client_id is not None and form_client_id != client_id:
            raise InvalidRequestOAuthError("client_id differs from the Authorization header")
        return TokenRequest(client_id, "client_secret_basic", scope, client_secret=secret)

    if not form_client_id:
        raise InvalidClientError("client_id is required with client_secret")
    return TokenRequest(
        form_client_id, "client_secret_post", scope, client_secret=fields["client_secret"]
    )


def token_response(issued: IssuedToken, granted: ScopeSet) -> dict[str, Any]:
    """RFC 6749 §5.1 body; no refresh token (SMART Backend Services)."""
    return {
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
        "scope": granted.to_string(),
    }


def _single_valued(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise InvalidRequestOAuthError(f"parameter {name!r} is repeated")
        fields[name] = value
    return fields


def _basic_credentials(authorization: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1: base64(urlencode(id) ":" urlencode(secret))."""
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidClientError("malformed Basic credentials") from exc
    raw_id, sep, raw_secret = decoded.partition(":")
    client_id, secret = unquote(raw_id), unquote(raw_secret)
    if not sep or not client_id or not secret:
        raise InvalidClientError("malformed Basic credentials")
    return client_id, secret
