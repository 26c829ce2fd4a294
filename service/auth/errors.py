"""Auth errors.

    ServiceError
    ├── OAuthError (400)                 RFC 6749 §5.2 token-endpoint errors, rendered as
    │   ├── InvalidRequestOAuthError       {"error": ..., "error_description": ...}
    │   ├── InvalidClientError (401)
    │   │   └── JwksFetchError             a client's jwks_uri could not be used
    │   ├── InvalidGrantError
    │   ├── InvalidScopeError
    │   ├── UnauthorizedClientError
    │   └── UnsupportedGrantTypeError
    └── AuthenticationError (401)
        └── TokenError                     bearer token rejected (RFC 6750 invalid_token)
            ├── MalformedTokenError
            ├── TokenSignatureError        bad signature or unknown kid
            ├── TokenExpiredError
            ├── TokenNotYetValidError
            ├── TokenAudienceError
            └── TokenIssuerError

OAuth errors subclass ServiceError so that one escaping the token route still becomes a sane
401/400 OperationOutcome; the token route itself should answer with ``as_json()``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from service.errors import AuthenticationError, ServiceError

OAuthErrorCode = Literal[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
]

TokenErrorReason = Literal[
    "malformed", "bad_signature", "expired", "not_yet_valid", "wrong_audience", "wrong_issuer"
]


class OAuthError(ServiceError):
    status = 400
    issue_code = "invalid"
    error: ClassVar[OAuthErrorCode] = "invalid_request"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def as_json(self) -> dict[str, str]:
        """The RFC 6749 §5.2 response body."""
        return {"error": self.error, "error_description": self.description}


class InvalidRequestOAuthError(OAuthError):
    error = "invalid_request"


class InvalidClientError(OAuthError):
    status, issue_code = 401, "login"
    error = "invalid_client"


class JwksFetchError(InvalidClientError):
    """The client's JWK Set URL is unusable (network, TLS, status, size, JSON)."""


class InvalidGrantError(OAuthError):
    error = "invalid_grant"


class InvalidScopeError(OAuthError):
    error = "invalid_scope"


class UnauthorizedClientError(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantTypeError(OAuthError):
    error = "unsupported_grant_type"


_OAUTH_ERRORS: dict[OAuthErrorCode, type[OAuthError]] = {
    cls.error: cls
    for cls in (
        InvalidRequestOAuthError,
        InvalidClientError,
        InvalidGrantError,
        UnauthorizedClientError,
        UnsupportedGrantTypeError,
        InvalidScopeError,
    )
}


def oauth_error(code: OAuthErrorCode, description: str) -> OAuthError:
    """Build the OAuthError subclass for an RFC 6749 error code."""
    return _OAUTH_ERRORS[code](description)


class TokenError(AuthenticationError):
    """A bearer token was rejected; ``reason`` says why (never shown to clients verbatim)."""

    reason: ClassVar[TokenErrorReason] = "malformed"

    def __init__(self, description: str) -> None:
        escaped = description.replace("\\", "\\\\").replace('"', '\\"')
        super().__init__(
            description,
            headers={
                "WWW-Authenticate": (f'Bearer error="invalid_token", error_description="{escaped}"')
            },
        )
        self.description = description


class MalformedTokenError(TokenError):
    reason = "malformed"


class TokenSignatureError(TokenError):
    reason = "bad_signature"


class TokenExpiredError(TokenError):
    reason = "expired"


class TokenNotYetValidError(TokenError):
    reason = "not_yet_valid"


class TokenAudienceError(TokenError):
    reason = "wrong_audience"


class TokenIssuerError(TokenError):
    reason = "wrong_issuer"
