"""The verified-token cache skips only the signature check, and only for the same key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

import pytest

from service.auth import tokens
from service.auth.errors import (
    TokenAudienceError,
    TokenExpiredError,
    TokenIssuerError,
    TokenNotYetValidError,
    TokenSignatureError,
)
from service.auth.keys import SigningKeyRing
from service.auth.scopes import ScopeSet
from service.auth.tokens import (
    LocalTokenVerifier,
    VerifiedTokenCache,
    issue_access_token,
    verify_access_token,
)
from tests.unit.auth.helpers import NOW, tamper

ISSUER = "https://handoff.example.org/auth"
AUDIENCE = "https://handoff.example.org/fhir"


@pytest.fixture
def ring() -> SigningKeyRing:
    return SigningKeyRing.generate()


def issue(ring: SigningKeyRing, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "client_id": "partner-clinic",
        "organization": "Organization/123",
        "scopes": ScopeSet.parse("system/Task.rs"),
        "ring": ring,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "now": NOW,
        "lifetime_seconds": 60,
    }
    arguments.update(overrides)
    return issue_access_token(**arguments).access_token


def verify(ring: SigningKeyRing, token: str, cache: VerifiedTokenCache, **kw: Any) -> Any:
    arguments: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "now": NOW}
    arguments.update(kw)
    return verify_access_token(token, ring=ring, cache=cache, **arguments)


def counting_signature_checks() -> Any:
    return mock.patch.object(tokens, "verify_signature", wraps=tokens.verify_signature)


def test_second_use_skips_the_signature_check(ring: SigningKeyRing) -> None:
    cache = VerifiedTokenCache()
    token = issue(ring)
    with counting_signature_checks() as checked:
        first = verify(ring, token, cache)
        second = verify(ring, token, cache)
    assert first == second and first["sub"] == "partner-clinic"
    assert checked.call_count == 1


def test_claims_are_still_checked_on_every_use(ring: SigningKeyRing) -> None:
    cache = VerifiedTokenCache()
    token = issue(ring)
    verify(ring, token, cache)
    with pytest.raises(TokenExpiredError):
        verify(ring, token, cache, now=NOW + timedelta(seconds=66))
    with pytest.raises(TokenNotYetValidError):
        verify(ring, token, cache, now=NOW - timedelta(minutes=10))
    with pytest.raises(TokenAudienceError):
        verify(ring, token, cache, audience="https://elsewhere.example/fhir")
    with pytest.raises(TokenIssuerError):
        verify(ring, token, cache, issuer="https://elsewhere.example/auth")
    assert verify(ring, token, cache)["sub"] == "partner-clinic"


def test_bad_signatures_are_never_remembered(ring: SigningKeyRing) -> None:
    cache = VerifiedTokenCache()
    forged = tamper(issue(ring), lambda claims: claims.update(sub="someone-else"))
    for _ in range(2):
        with pytest.raises(TokenSignatureError):
            verify(ring, forged, cache)
    assert cache.lookup(forged, ring) is None


def test_a_key_dropped_from_the_ring_stops_cached_tokens(ring: SigningKeyRing) -> None:
    cache = VerifiedTokenCache()
    token = issue(ring)
    verify(ring, token, cache)
    ring.rotate(now=NOW)
    assert verify(ring, token, cache)["sub"] == "partner-clinic"  # retired keys still verify
    ring.retire_before(NOW + timedelta(seconds=1))
    with pytest.raises(TokenSignatureError):
        verify(ring, token, cache)


def test_another_ring_with_the_same_kid_verifies_again(ring: SigningKeyRing) -> None:
    cache = VerifiedTokenCache()
    token = issue(ring)
    verify(ring, token, cache)
    reloaded = SigningKeyRing.from_dict(ring.to_dict())  # what a reload from the database gives
    with counting_signature_checks() as checked:
        assert verify(reloaded, token, cache)["sub"] == "partner-clinic"
    assert checked.call_count == 1


def test_the_cache_is_bounded(ring: SigningKeyRing) -> None:
    cache = VerifiedTokenCache(max_entries=2)
    first, second, third = (issue(ring) for _ in range(3))
    for token in (first, second, third):
        verify(ring, token, cache)
    assert cache.lookup(first, ring) is None  # the oldest made room
    assert cache.lookup(second, ring) is not None
    assert cache.lookup(third, ring) is not None


async def test_local_verifier_uses_the_cache(ring: SigningKeyRing) -> None:
    cache = VerifiedTokenCache()
    verifier = LocalTokenVerifier(ring=ring, issuer=ISSUER, audience=AUDIENCE, cache=cache)
    token = issue(ring)
    with counting_signature_checks() as checked:
        for _ in range(3):
            principal = await verifier.verify(token, now=NOW)
            assert principal.organization == "Organization/123"
    assert checked.call_count == 1


async def test_the_principal_is_made_once_per_token_and_claims_still_checked(
    ring: SigningKeyRing,
) -> None:
    cache = VerifiedTokenCache(max_entries=1)
    verifier = LocalTokenVerifier(ring=ring, issuer=ISSUER, audience=AUDIENCE, cache=cache)
    token, other = issue(ring), issue(ring, client_id="another-clinic")
    with mock.patch.object(
        tokens, "principal_from_claims", wraps=tokens.principal_from_claims
    ) as made:
        first = await verifier.verify(token, now=NOW)
        assert await verifier.verify(token, now=NOW) is first
        assert made.call_count == 1
        with pytest.raises(TokenExpiredError):  # a remembered principal does not skip expiry
            await verifier.verify(token, now=NOW + timedelta(seconds=66))
        assert (await verifier.verify(other, now=NOW)).client_id == "another-clinic"
        again = await verifier.verify(token, now=NOW)  # evicted with its entry: made anew
    assert again == first and again is not first
    assert made.call_count == 3
