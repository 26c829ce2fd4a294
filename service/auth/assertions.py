"""SMART Backend Services client authentication: the ``private_key_jwt`` client assertion.

RFC 7523 §3 plus SMART's rules: RS384/ES384 only, ``iss`` = ``sub`` = client id, ``aud`` = our
token URL, ``exp`` at most five minutes ahead, a single-use ``jti``. Every failure is
``invalid_client`` (SMART: authentication errors), with a description saying which check failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from joserfc.jwk import Key

from service.auth.errors import InvalidClientError
from service.auth.jose import (
    JoseFormatError,
    candidate_keys,
    epoch,
    from_epoch,
    import_public_keys,
    numeric_date,
    split_token,
    verify_signature,
)
from service.auth.jwks_fetch import JwksFetcher

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_SECONDS = 300
MAX_JTI_LENGTH = 255


class JtiStore(Protocol):
    """Replay protection; the lead's implementation inserts a row with a unique key."""

    async def remember(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        """Record ``jti`` for ``client_id`` until ``expires_at``; False if already recorded."""
        ...


@dataclass(frozen=True)
class ClientKeySource:
    """A client's registered keys: an inline public JWKS and/or a JWK Set URL."""

    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None


@dataclass(frozen=True)
class VerifiedAssertion:
    client_id: str
    jti: str
    expires_at: datetime
    alg: str
    kid: str | None


def assertion_client_id(assertion: str) -> str:
    """The (unverified) client id an assertion claims, to look up the client's keys.

    Trust nothing else about it until ``verify_client_assertion`` succeeds.
    """
    try:
        _, claims = split_token(assertion)
    except JoseFormatError as exc:
        raise InvalidClientError(f"client_assertion is malformed: {exc}") from exc
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise InvalidClientError("client_assertion has no 'iss'")
    return issuer


async def verify_client_assertion(
    assertion: str,
    *,
    client_id: str,
    token_url: str,
    keys: ClientKeySource,
    jti_store: JtiStore,
    fetcher: JwksFetcher | None,
    now: datetime,
    leeway_seconds: int = 30,
) -> VerifiedAssertion:
    """Authenticate ``client_id`` by its signed assertion, or raise InvalidClientError.

    The ``jti`` is recorded only after every other check passed, so a rejected assertion does
    not burn its nonce. ``leeway_seconds`` absorbs clock skew on exp/nbf/iat.
    """
    try:
        header, claims = split_token(assertion)
    except JoseFormatError as exc:
        raise InvalidClientError(f"client_assertion is malformed: {exc}") from exc

    alg = header["alg"]
    if alg not in ASSERTION_ALGORITHMS:
        raise InvalidClientError(f"client_assertion alg {alg!r} not allowed; use RS384 or ES384")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidClientError("client_assertion 'kid' must be a string")
    jku = header.get("jku")
    if jku is not None and jku != keys.jwks_uri:
        raise InvalidClientError("client_assertion 'jku' is not the registered JWK Set URL")

    candidates = await _candidate_keys(keys, fetcher=fetcher, kid=kid, alg=alg)
    if not candidates:
        which = f"kid {kid!r}" if kid is not None else f"alg {alg}"
        raise InvalidClientError(f"no registered key of the client matches {which}")
    if not any(verify_signature(assertion, key, alg) for key in candidates):
        raise InvalidClientError("client_assertion signature is invalid")

    expires_at = _check_claims(
        claims, client_id=client_id, token_url=token_url, now=epoch(now), leeway=leeway_seconds
    )
    jti = claims["jti"]
    if not await jti_store.remember(client_id, jti, expires_at):
        raise InvalidClientError("client_assertion 'jti' has already been used")
    return VerifiedAssertion(client_id, jti, expires_at, alg, kid)


async def _candidate_keys(
    source: ClientKeySource, *, fetcher: JwksFetcher | None, kid: str | None, alg: str
) -> list[Key]:
    if source.jwks is None and source.jwks_uri is None:
        raise InvalidClientError("client has no registered keys")
    found: list[Key] = []
    if source.jwks is not None:
        try:
            inline = import_public_keys(source.jwks, algorithms=ASSERTION_ALGORITHMS)
        except JoseFormatError as exc:
            raise InvalidClientError("client's registered JWKS is unusable") from exc
        found = candidate_keys(inline, kid=kid, alg=alg)
    if not found and source.jwks_uri is not None:
        if fetcher is None:
            raise ValueError("client registered a jwks_uri but no JwksFetcher was given")
        published = await fetcher.get_keys(source.jwks_uri, kid=kid)
        found = candidate_keys(published, kid=kid, alg=alg)
    return found


def _check_claims(
    claims: Mapping[str, Any], *, client_id: str, token_url: str, now: int, leeway: int
) -> datetime:
    if claims.get("iss") != client_id:
        raise InvalidClientError("client_assertion 'iss' is not the client id")
    if claims.get("sub") != client_id:
        raise InvalidClientError("client_assertion 'sub' must equal 'iss' (the client id)")

    audience = claims.get("aud")
    if not (audience == token_url or (isinstance(audience, list) and token_url in audience)):
        raise InvalidClientError("client_assertion 'aud' is not this token endpoint")

    exp = numeric_date(claims.get("exp"))
    if exp is None:
        raise InvalidClientError("client_assertion needs a numeric 'exp'")
    if exp <= now - leeway:
        raise InvalidClientError("client_assertion has expired")
    if exp > now + MAX_ASSERTION_LIFETIME_SECONDS + leeway:
        raise InvalidClientError("client_assertion 'exp' is more than 5 minutes ahead")
    for name in ("nbf", "iat"):
        if name in claims:
            value = numeric_date(claims[name])
            if value is None:
                raise InvalidClientError(f"client_assertion '{name}' is not a NumericDate")
            if value > now + leeway:
                raise InvalidClientError(f"client_assertion '{name}' is in the future")

    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise InvalidClientError("client_assertion needs a 'jti' string (at most 255 characters)")
    return from_epoch(exp)
