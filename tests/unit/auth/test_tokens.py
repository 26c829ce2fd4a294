from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, Key, OctKey, RSAKey

from service.auth.errors import (
    MalformedTokenError,
    TokenAudienceError,
    TokenError,
    TokenExpiredError,
    TokenIssuerError,
    TokenNotYetValidError,
    TokenSignatureError,
)
from service.auth.jose import epoch
from service.auth.jwks_fetch import JwksFetcher
from service.auth.keys import SigningKeyRing
from service.auth.scopes import ScopeSet
from service.auth.tokens import (
    ExternalIssuerVerifier,
    LocalTokenVerifier,
    issue_access_token,
    peek_issuer,
    principal_from_claims,
    verify_access_token,
)
from service.errors import ServiceUnavailableError
from tests.unit.auth.helpers import NOW, make_jwt, public_jwks, tamper, unsigned_jwt

ISSUER = "https://handoff.example.org"
AUDIENCE = "https://handoff.example.org/fhir"
SCOPES = ScopeSet.parse("system/Task.rs?owner=Organization/123 system/Consent.rs")


@pytest.fixture
def ring() -> SigningKeyRing:
    return SigningKeyRing.generate()


def issue(ring: SigningKeyRing, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "client_id": "partner-clinic",
        "organization": "Organization/123",
        "scopes": SCOPES,
        "ring": ring,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "now": NOW,
        "lifetime_seconds": 300,
    }
    arguments.update(overrides)
    return issue_access_token(**arguments).access_token


def verify(ring: SigningKeyRing, token: str, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"ring": ring, "issuer": ISSUER, "audience": AUDIENCE, "now": NOW}
    arguments.update(overrides)
    return verify_access_token(token, **arguments)


# --- our own tokens ------------------------------------------------------------------------


def test_issue_and_verify(ring: SigningKeyRing) -> None:
    issued = issue_access_token(
        client_id="partner-clinic",
        organization="Organization/123",
        scopes=SCOPES,
        ring=ring,
        issuer=ISSUER,
        audience=AUDIENCE,
        now=NOW,
        lifetime_seconds=120,
    )
    token, expires_in, jti = issued
    assert expires_in == 120
    claims = verify(ring, token)
    assert claims == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "partner-clinic",
        "client_id": "partner-clinic",
        "org": "Organization/123",
        "scope": SCOPES.to_string(),
        "iat": epoch(NOW),
        "exp": epoch(NOW) + 120,
        "jti": jti,
    }
    principal = principal_from_claims(claims)
    assert principal.client_id == "partner-clinic"
    assert principal.organization == "Organization/123"
    assert principal.scopes == SCOPES
    assert (principal.is_admin, principal.emergency) == (False, False)
    assert principal.token_id == jti
    assert principal.issuer == ISSUER
    assert principal.expires_at == NOW + timedelta(seconds=120)


def test_each_token_gets_a_fresh_jti(ring: SigningKeyRing) -> None:
    jtis = {verify(ring, issue(ring))["jti"] for _ in range(5)}
    assert len(jtis) == 5


def test_header_names_kid_and_type(ring: SigningKeyRing) -> None:
    from service.auth.jose import split_token

    header, _ = split_token(issue(ring))
    assert header == {"typ": "at+jwt", "kid": ring.active.kid, "alg": "ES384"}


def test_admin_and_emergency_and_no_organization(ring: SigningKeyRing) -> None:
    token = issue(ring, organization=None, scopes=ScopeSet.parse("handoff/admin"), emergency=True)
    principal = principal_from_claims(verify(ring, token))
    assert principal.organization is None
    assert principal.is_admin
    assert principal.emergency


def test_rs384_ring(ring: SigningKeyRing) -> None:
    rsa_ring = SigningKeyRing.generate("RS384")
    assert verify(rsa_ring, issue(rsa_ring))["sub"] == "partner-clinic"


@pytest.mark.parametrize("lifetime", [0, -1, 301, 3600])
def test_lifetime_is_capped_at_five_minutes(ring: SigningKeyRing, lifetime: int) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        issue(ring, lifetime_seconds=lifetime)


def test_expired(ring: SigningKeyRing) -> None:
    token = issue(ring, lifetime_seconds=60)
    assert verify(ring, token, now=NOW + timedelta(seconds=64))  # 5 s leeway
    with pytest.raises(TokenExpiredError) as info:
        verify(ring, token, now=NOW + timedelta(seconds=65))
    assert info.value.reason == "expired"
    assert info.value.status == 401
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]


def test_not_yet_valid(ring: SigningKeyRing) -> None:
    token = issue(ring, now=NOW + timedelta(minutes=2))
    with pytest.raises(TokenNotYetValidError):
        verify(ring, token)


def test_bad_signature(ring: SigningKeyRing) -> None:
    forged = tamper(issue(ring), lambda claims: claims.update(scope="system/*.cruds"))
    with pytest.raises(TokenSignatureError, match="signature is invalid") as info:
        verify(ring, forged)
    assert info.value.reason == "bad_signature"


def test_token_of_another_ring_with_same_kid(ring: SigningKeyRing) -> None:
    stranger = SigningKeyRing.generate()
    data = stranger.to_dict()
    data["keys"][0]["kid"] = ring.active.kid
    data["active_kid"] = ring.active.kid
    forged = issue(SigningKeyRing.from_dict(data))
    with pytest.raises(TokenSignatureError):
        verify(ring, forged)


def test_unknown_kid(ring: SigningKeyRing) -> None:
    with pytest.raises(TokenSignatureError, match="not signed by a current key"):
        verify(ring, issue(SigningKeyRing.generate()))


def test_wrong_audience(ring: SigningKeyRing) -> None:
    token = issue(ring, audience="https://elsewhere.example/fhir")
    with pytest.raises(TokenAudienceError) as info:
        verify(ring, token)
    assert info.value.reason == "wrong_audience"


def test_wrong_issuer(ring: SigningKeyRing) -> None:
    token = issue(ring, issuer="https://evil.example")
    with pytest.raises(TokenIssuerError) as info:
        verify(ring, token)
    assert info.value.reason == "wrong_issuer"


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c.d", "!!!.e30.x", "e30.e30.x", "eyJhbGciOiJFUzM4NCJ9.W10.x"]
)
def test_malformed(ring: SigningKeyRing, token: str) -> None:
    with pytest.raises(MalformedTokenError) as info:
        verify(ring, token)
    assert info.value.reason == "malformed"


def test_alg_none_and_hs256_are_refused(ring: SigningKeyRing) -> None:
    claims = verify(ring, issue(ring))
    header = {"typ": "at+jwt", "kid": ring.active.kid}
    with pytest.raises(TokenSignatureError, match="not accepted"):
        verify(ring, unsigned_jwt({**header, "alg": "none"}, claims))
    secret = OctKey.generate_key(256, parameters={"kid": ring.active.kid})
    with pytest.raises(TokenSignatureError, match="not accepted"):
        verify(ring, make_jwt(secret, "HS256", claims, header=header))


def test_client_assertion_is_not_an_access_token(ring: SigningKeyRing) -> None:
    # Same key and claims, but typ JWT: refuse to accept other JWT kinds as access tokens.
    claims = verify(ring, issue(ring))
    token = make_jwt(ring.active.key, "ES384", claims, header={"typ": "JWT"})
    with pytest.raises(MalformedTokenError, match="typ"):
        verify(ring, token)


def test_rotation_keeps_old_tokens_valid_until_retired(ring: SigningKeyRing) -> None:
    old_token = issue(ring)
    ring.rotate(now=NOW)
    new_token = issue(ring)
    assert verify(ring, old_token)["jti"]
    assert verify(ring, new_token)["jti"]

    ring.retire_before(NOW - timedelta(seconds=300))  # too early: the old key stays
    assert verify(ring, old_token)["jti"]

    ring.retire_before(NOW + timedelta(seconds=1))
    with pytest.raises(TokenSignatureError):
        verify(ring, old_token)
    assert verify(ring, new_token)["jti"]


async def test_local_verifier_returns_principal(ring: SigningKeyRing) -> None:
    verifier = LocalTokenVerifier(ring=ring, issuer=ISSUER, audience=AUDIENCE)
    principal = await verifier.verify(issue(ring), now=NOW)
    assert principal.client_id == "partner-clinic"
    with pytest.raises(TokenError):
        await verifier.verify(issue(ring, issuer="https://x.example"), now=NOW)


def test_peek_issuer(ring: SigningKeyRing) -> None:
    assert peek_issuer(issue(ring)) == ISSUER
    assert peek_issuer("garbage") is None


# --- principal_from_claims -----------------------------------------------------------------


BASE_CLAIMS = {"iss": ISSUER, "sub": "c1", "scope": "system/Task.rs", "exp": epoch(NOW)}


@pytest.mark.parametrize(
    ("org", "expected"),
    [
        ("Organization/123", "Organization/123"),
        ("123", "Organization/123"),
        (["123"], "Organization/123"),
        ([], None),
        ("", None),
        (None, None),
    ],
)
def test_organization_claim_forms(org: object, expected: str | None) -> None:
    claims = {**BASE_CLAIMS, "org": org}
    assert principal_from_claims(claims).organization == expected


@pytest.mark.parametrize(
    "org", [["1", "2"], "Practitioner/1", "Organization/", "Organization/1/_history/2", 42]
)
def test_bad_organization_claims(org: object) -> None:
    with pytest.raises(MalformedTokenError):
        principal_from_claims({**BASE_CLAIMS, "org": org})


def test_scope_claim_as_list_and_ignored_scopes() -> None:
    claims = {**BASE_CLAIMS, "scope": ["openid", "system/Task.rs", "profile", "handoff/admin"]}
    principal = principal_from_claims(claims)
    assert principal.scopes.to_string() == "system/Task.rs handoff/admin"
    assert principal.is_admin


def test_missing_scope_grants_nothing() -> None:
    principal = principal_from_claims({k: v for k, v in BASE_CLAIMS.items() if k != "scope"})
    assert not principal.scopes


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": ISSUER},  # no client
        {"sub": "c1"},  # no issuer
        {**BASE_CLAIMS, "scope": 7},
    ],
)
def test_unusable_claims(claims: dict[str, Any]) -> None:
    with pytest.raises(MalformedTokenError):
        principal_from_claims(claims)


# --- external issuer -----------------------------------------------------------------------

KEYCLOAK = "https://sso.example.org/realms/handoff"
KEYCLOAK_JWKS = f"{KEYCLOAK}/protocol/openid-connect/certs"


def keycloak_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": KEYCLOAK,
        "aud": ["handoff", "account"],
        "sub": "6a3c0a39-service-account-user",
        "azp": "county-jail",
        "typ": "Bearer",
        "scope": "profile email system/Task.cruds system/ServiceRequest.rs",
        "handoff_org": "jail-7",
        "iat": epoch(NOW) - 10,
        "exp": epoch(NOW) + 290,
        "jti": "kc-token-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
async def idp(
    rsa_key: RSAKey, ec_key: ECKey
) -> AsyncIterator[Callable[..., ExternalIssuerVerifier]]:
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(200, json=public_jwks(rsa_key, ec_key))
        )
    ) as client:
        fetcher = JwksFetcher(client)

        def make(**overrides: Any) -> ExternalIssuerVerifier:
            arguments: dict[str, Any] = {
                "issuer": KEYCLOAK,
                "jwks_url": KEYCLOAK_JWKS,
                "audience": "handoff",
                "fetcher": fetcher,
                "organization_claim": "handoff_org",
            }
            arguments.update(overrides)
            return ExternalIssuerVerifier(**arguments)

        yield make


@pytest.mark.parametrize(("key_name", "alg"), [("rsa_key", "RS256"), ("ec_key", "ES384")])
async def test_external_token_maps_to_principal(
    idp: Callable[..., ExternalIssuerVerifier],
    request: pytest.FixtureRequest,
    key_name: str,
    alg: str,
) -> None:
    key: Key = request.getfixturevalue(key_name)
    principal = await idp().verify(make_jwt(key, alg, keycloak_claims()), now=NOW)
    assert principal.client_id == "county-jail"
    assert principal.organization == "Organization/jail-7"
    assert principal.issuer == KEYCLOAK
    assert principal.token_id == "kc-token-1"
    assert principal.scopes.to_string() == "system/ServiceRequest.rs system/Task.cruds"
    assert not principal.is_admin


async def test_external_client_claim_fallbacks(
    idp: Callable[..., ExternalIssuerVerifier], rsa_key: RSAKey
) -> None:
    verifier = idp()
    token = make_jwt(rsa_key, "RS256", keycloak_claims(azp=None, client_id="by-client-id"))
    assert (await verifier.verify(token, now=NOW)).client_id == "by-client-id"
    token = make_jwt(rsa_key, "RS256", keycloak_claims(azp=None))
    assert (await verifier.verify(token, now=NOW)).client_id == "6a3c0a39-service-account-user"


async def test_external_custom_claim_names(
    idp: Callable[..., ExternalIssuerVerifier], rsa_key: RSAKey
) -> None:
    verifier = idp(client_claim="client", organization_claim="tenant", scope_claim="scp")
    claims = keycloak_claims(client="c9", tenant="Organization/9", scp=["system/Consent.rs"])
    principal = await verifier.verify(make_jwt(rsa_key, "RS384", claims), now=NOW)
    assert (principal.client_id, principal.organization) == ("c9", "Organization/9")
    assert principal.scopes.to_string() == "system/Consent.rs"


async def test_external_emergency_claim_is_not_trusted(
    idp: Callable[..., ExternalIssuerVerifier], rsa_key: RSAKey
) -> None:
    claims = keycloak_claims(handoff_emergency=True)
    assert not (await idp().verify(make_jwt(rsa_key, "RS256", claims), now=NOW)).emergency


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"iss": "https://sso.example.org/realms/other"}, TokenIssuerError),
        ({"aud": "account"}, TokenAudienceError),
        ({"aud": None}, TokenAudienceError),
        ({"exp": epoch(NOW) - 31}, TokenExpiredError),
        ({"exp": None}, MalformedTokenError),
        ({"nbf": epoch(NOW) + 60}, TokenNotYetValidError),
        ({"handoff_org": ["a", "b"]}, MalformedTokenError),
    ],
)
async def test_external_token_rejections(
    idp: Callable[..., ExternalIssuerVerifier],
    rsa_key: RSAKey,
    overrides: dict[str, Any],
    error: type[TokenError],
) -> None:
    token = make_jwt(rsa_key, "RS256", keycloak_claims(**overrides))
    with pytest.raises(error):
        await idp().verify(token, now=NOW)


async def test_external_token_signed_by_unknown_key(
    idp: Callable[..., ExternalIssuerVerifier], other_rsa_key: RSAKey
) -> None:
    # same kid as the published key, different key material
    token = make_jwt(other_rsa_key, "RS256", keycloak_claims())
    with pytest.raises(TokenSignatureError, match="signature is invalid"):
        await idp().verify(token, now=NOW)
    token = make_jwt(other_rsa_key, "RS256", keycloak_claims(), header={"kid": "rotated-away"})
    with pytest.raises(TokenSignatureError, match="not signed by a key"):
        await idp().verify(token, now=NOW)


async def test_external_algorithm_allow_list(
    idp: Callable[..., ExternalIssuerVerifier], rsa_key: RSAKey
) -> None:
    secret = OctKey.generate_key(256, parameters={"kid": "rsa-1"})
    with pytest.raises(TokenSignatureError, match="not accepted"):
        await idp().verify(make_jwt(secret, "HS256", keycloak_claims()), now=NOW)
    with pytest.raises(TokenSignatureError, match="not accepted"):
        await idp(algorithms=["ES384"]).verify(
            make_jwt(rsa_key, "RS256", keycloak_claims()), now=NOW
        )
    with pytest.raises(ValueError, match="unsupported"):
        idp(algorithms=["HS256"])


async def test_external_jwks_outage_is_service_unavailable(rsa_key: RSAKey) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502))
    async with httpx.AsyncClient(transport=transport) as client:
        verifier = ExternalIssuerVerifier(
            issuer=KEYCLOAK, jwks_url=KEYCLOAK_JWKS, audience="handoff", fetcher=JwksFetcher(client)
        )
        with pytest.raises(ServiceUnavailableError):
            await verifier.verify(make_jwt(rsa_key, "RS256", keycloak_claims()), now=NOW)
