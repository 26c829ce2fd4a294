"""Access tokens: the JWTs we issue (RFC 9068 shape) and those of an external IdP (Keycloak...).

Both verifiers check, in order: format and algorithm (malformed / bad signature), signature by
``kid``, then ``iss``, ``aud``, ``exp``, ``nbf``/``iat``, and map the claims to a Principal.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from joserfc.jwk import Key

from service.auth.errors import (
    JwksFetchError,
    MalformedTokenError,
    TokenAudienceError,
    TokenExpiredError,
    TokenIssuerError,
    TokenNotYetValidError,
    TokenSignatureError,
)
from service.auth.jose import (
    JoseFormatError,
    candidate_keys,
    epoch,
    from_epoch,
    numeric_date,
    sign,
    split_token,
    verify_signature,
)
from service.auth.jwks_fetch import JwksFetcher
from service.auth.keys import SIGNING_ALGORITHMS, SigningKey, SigningKeyRing
from service.auth.principal import Principal
from service.auth.scopes import ScopeSet
from service.errors import ServiceUnavailableError

ACCESS_TOKEN_TYPE = "at+jwt"  # RFC 9068 §2.1
MAX_ACCESS_TOKEN_LIFETIME_SECONDS = 300  # SMART Backend Services: SHOULD NOT exceed 5 minutes
EXTERNAL_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
ORGANIZATION_CLAIM = "org"
EMERGENCY_CLAIM = "handoff_emergency"

Claims = dict[str, Any]


class IssuedToken(NamedTuple):
    access_token: str
    expires_in: int
    jti: str


def issue_access_token(
    *,
    client_id: str,
    organization: str | None,
    scopes: ScopeSet,
    ring: SigningKeyRing,
    issuer: str,
    audience: str,
    now: datetime,
    lifetime_seconds: int = MAX_ACCESS_TOKEN_LIFETIME_SECONDS,
    emergency: bool = False,
) -> IssuedToken:
    """Sign an access token with the ring's active key."""
    if not 0 < lifetime_seconds <= MAX_ACCESS_TOKEN_LIFETIME_SECONDS:
        raise ValueError(f"lifetime must be 1..{MAX_ACCESS_TOKEN_LIFETIME_SECONDS} seconds")
    issued_at = epoch(now)
    jti = secrets.token_urlsafe(18)
    claims: Claims = {
        "iss": issuer,
        "aud": audience,
        "sub": client_id,
        "client_id": client_id,
        "scope": scopes.to_string(),
        "iat": issued_at,
        "exp": issued_at + lifetime_seconds,
        "jti": jti,
    }
    if organization is not None:
        claims[ORGANIZATION_CLAIM] = organization
    if emergency:
        claims[EMERGENCY_CLAIM] = True
    key = ring.active
    header = {"typ": ACCESS_TOKEN_TYPE, "kid": key.kid}
    return IssuedToken(sign(header, claims, key.key, key.alg), lifetime_seconds, jti)


class VerifiedTokenCache:
    """Signatures already checked: token text -> its claims and the key that verified it.

    Verifying an ES384 signature costs ~1.5 ms of CPU, and a client sends the same token on
    every request for up to five minutes. Only the signature check is remembered, and only
    while the ring still holds that very key object (a reloaded, rotated or trimmed ring
    re-verifies); issuer, audience, expiry and not-before are checked on every use, as before.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str, SigningKey, Claims]] = {}
        # The Principal made from an entry's claims (parsing the scopes cost ~50 µs per request).
        self._principals: dict[str, tuple[Claims, Principal]] = {}

    def lookup(self, token: str, ring: SigningKeyRing) -> Claims | None:
        entry = self._entries.get(token)
        if entry is None or ring.get(entry[0]) is not entry[1]:
            return None
        return entry[2]

    def remember(self, token: str, key: SigningKey, claims: Claims) -> None:
        if len(self._entries) >= self.max_entries:
            oldest = next(iter(self._entries))
            del self._entries[oldest]
            self._principals.pop(oldest, None)
        self._entries[token] = (key.kid, key, claims)

    def principal(self, token: str, claims: Claims) -> Principal:
        """``principal_from_claims(claims)``, made once per verified token."""
        found = self._principals.get(token)
        if found is not None and found[0] is claims:
            return found[1]
        principal = principal_from_claims(claims)
        if token in self._entries:
            self._principals[token] = (claims, principal)
        return principal


def verify_access_token(
    token: str,
    *,
    ring: SigningKeyRing,
    issuer: str,
    audience: str,
    now: datetime,
    leeway_seconds: int = 5,
    cache: VerifiedTokenCache | None = None,
) -> Claims:
    """Verify one of our own access tokens; raise a TokenError subclass saying why not.

    The returned claims may be shared through ``cache``: read them, never change them.
    """
    claims = cache.lookup(token, ring) if cache is not None else None
    if claims is None:
        header, claims = _parse(token, SIGNING_ALGORITHMS)
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise MalformedTokenError(f"token 'typ' is not {ACCESS_TOKEN_TYPE!r}")
        kid = header.get("kid")
        signing_key = ring.get(kid) if isinstance(kid, str) else None
        if signing_key is None:
            raise TokenSignatureError("token was not signed by a current key of this server")
        if signing_key.alg != header["alg"] or not verify_signature(
            token, signing_key.key, signing_key.alg
        ):
            raise TokenSignatureError("token signature is invalid")
        if cache is not None:
            cache.remember(token, signing_key, claims)
    _check_claims(claims, issuer=issuer, audience=audience, now=epoch(now), leeway=leeway_seconds)
    return claims


def principal_from_claims(
    claims: Mapping[str, Any],
    *,
    client_claims: Sequence[str] = ("client_id", "sub"),
    organization_claim: str | None = ORGANIZATION_CLAIM,
    scope_claim: str = "scope",
    emergency_claim: str | None = EMERGENCY_CLAIM,
) -> Principal:
    """Map verified claims to a Principal.

    The client id is the first non-empty string among ``client_claims``. The organization may be
    ``Organization/<id>`` or a bare id; a list must hold exactly one. Scopes may be a
    space-separated string or a list; those that grant nothing to a backend client are ignored.
    """
    client_id = next(
        (v for name in client_claims if isinstance(v := claims.get(name), str) and v), None
    )
    if client_id is None:
        raise MalformedTokenError(f"token names no client ({', '.join(client_claims)})")
    issuer = claims.get("iss")
    if not isinstance(issuer, str):
        raise MalformedTokenError("token has no 'iss'")
    organization = (
        _organization(claims.get(organization_claim), organization_claim)
        if organization_claim
        else None
    )
    raw_scope = claims.get(scope_claim)
    if isinstance(raw_scope, list) and all(isinstance(s, str) for s in raw_scope):
        raw_scope = " ".join(raw_scope)
    if raw_scope is not None and not isinstance(raw_scope, str):
        raise MalformedTokenError(f"token '{scope_claim}' must be a string or list of strings")
    try:
        scopes = ScopeSet.parse(raw_scope)
    except ValueError as exc:
        raise MalformedTokenError(f"token '{scope_claim}' is unusable: {exc}") from exc
    jti = claims.get("jti")
    exp = numeric_date(claims.get("exp"))
    return Principal(
        client_id=client_id,
        organization=organization,
        scopes=scopes,
        is_admin=scopes.admin,
        token_id=jti if isinstance(jti, str) else None,
        issuer=issuer,
        emergency=emergency_claim is not None and claims.get(emergency_claim) is True,
        expires_at=from_epoch(exp) if exp is not None else None,
    )


def peek_issuer(token: str) -> str | None:
    """The unverified ``iss`` of a token, to pick the verifier; None if unreadable."""
    try:
        _, claims = split_token(token)
    except JoseFormatError:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


class TokenVerifier(Protocol):
    issuer: str

    async def verify(self, token: str, *, now: datetime) -> Principal: ...


class LocalTokenVerifier:
    """Verifies the tokens this server issues. ``ring`` may be replaced after a reload."""

    def __init__(
        self,
        *,
        ring: SigningKeyRing,
        issuer: str,
        audience: str,
        cache: VerifiedTokenCache | None = None,
    ) -> None:
        self.ring = ring
        self.issuer = issuer
        self.audience = audience
        self.cache = cache

    async def verify(self, token: str, *, now: datetime) -> Principal:
        claims = verify_access_token(
            token,
            ring=self.ring,
            issuer=self.issuer,
            audience=self.audience,
            now=now,
            cache=self.cache,
        )
        if self.cache is not None:
            return self.cache.principal(token, claims)
        return principal_from_claims(claims)


class ExternalIssuerVerifier:
    """Verifies access tokens of an external IdP (e.g. a Keycloak realm) against its JWKS.

    Keycloak puts the client in ``azp`` (``sub`` is the service-account user), scopes in
    ``scope``, and the audience only if an audience mapper adds it; the organization comes from
    a custom claim (HANDOFF_AUTH_ORGANIZATION_CLAIM, e.g. ``handoff_org``).
    """

    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str,
        audience: str,
        fetcher: JwksFetcher,
        client_claim: str = "azp",
        organization_claim: str | None = "handoff_org",
        scope_claim: str = "scope",
        algorithms: Collection[str] = EXTERNAL_ALGORITHMS,
        leeway_seconds: int = 30,
    ) -> None:
        unsupported = set(algorithms) - set(EXTERNAL_ALGORITHMS)
        if unsupported:
            raise ValueError(f"unsupported algorithms {sorted(unsupported)}")
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.audience = audience
        self._fetcher = fetcher
        self._client_claims = tuple(dict.fromkeys((client_claim, "client_id", "sub")))
        self._organization_claim = organization_claim
        self._scope_claim = scope_claim
        self._algorithms = tuple(algorithms)
        self._leeway = leeway_seconds

    async def verify(self, token: str, *, now: datetime) -> Principal:
        claims = await self.verify_claims(token, now=now)
        return principal_from_claims(
            claims,
            client_claims=self._client_claims,
            organization_claim=self._organization_claim,
            scope_claim=self._scope_claim,
            emergency_claim=None,
        )

    async def verify_claims(self, token: str, *, now: datetime) -> Claims:
        header, claims = _parse(token, self._algorithms)
        alg = header["alg"]
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise MalformedTokenError("token 'kid' must be a string")
        try:
            published = await self._fetcher.get_keys(self.jwks_url, kid=kid)
        except JwksFetchError as exc:
            # Not the caller's fault: we cannot verify anything until the IdP answers.
            raise ServiceUnavailableError("identity provider keys are unavailable") from exc
        keys: list[Key] = candidate_keys(published, kid=kid, alg=alg)
        if not keys:
            raise TokenSignatureError("token was not signed by a key of the identity provider")
        if not any(verify_signature(token, key, alg) for key in keys):
            raise TokenSignatureError("token signature is invalid")
        _check_claims(
            claims, issuer=self.issuer, audience=self.audience, now=epoch(now), leeway=self._leeway
        )
        return claims


def _parse(token: str, algorithms: Collection[str]) -> tuple[Claims, Claims]:
    try:
        header, claims = split_token(token)
    except JoseFormatError as exc:
        raise MalformedTokenError(f"token is malformed: {exc}") from exc
    if header["alg"] not in algorithms:
        raise TokenSignatureError(f"token alg {header['alg']!r} is not accepted")
    return header, claims


def _check_claims(
    claims: Mapping[str, Any], *, issuer: str, audience: str, now: int, leeway: int
) -> None:
    iss = claims.get("iss")
    if iss != issuer:
        shown = repr(iss[:200]) if isinstance(iss, str) else "no issuer"
        raise TokenIssuerError(f"token was issued by {shown}, not by this server ({issuer})")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise TokenAudienceError(f"token is not meant for this server ({audience})")
    exp = numeric_date(claims.get("exp"))
    if exp is None:
        raise MalformedTokenError("token needs a numeric 'exp'")
    if exp <= now - leeway:
        raise TokenExpiredError("token has expired")
    for name in ("nbf", "iat"):
        if name in claims:
            value = numeric_date(claims[name])
            if value is None:
                raise MalformedTokenError(f"token '{name}' is not a NumericDate")
            if value > now + leeway:
                raise TokenNotYetValidError(f"token '{name}' is in the future")


def _organization(value: object, claim: str) -> str | None:
    if isinstance(value, list):
        if len(value) != 1:
            if not value:
                return None
            raise MalformedTokenError(f"token '{claim}' names more than one organization")
        value = value[0]
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedTokenError(f"token '{claim}' must be a string")
    reference = value if "/" in value else f"Organization/{value}"
    resource_type, _, resource_id = reference.partition("/")
    if resource_type != "Organization" or not resource_id or "/" in resource_id:
        raise MalformedTokenError(f"token '{claim}' is not an Organization reference")
    return reference
