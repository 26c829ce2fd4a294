from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, OctKey, RSAKey

from service.auth.assertions import (
    ClientKeySource,
    VerifiedAssertion,
    assertion_client_id,
    verify_client_assertion,
)
from service.auth.errors import InvalidClientError
from service.auth.jose import epoch
from service.auth.jwks_fetch import JwksFetcher
from tests.unit.auth.helpers import (
    CLIENT_ID,
    NOW,
    TOKEN_URL,
    MemoryJtiStore,
    assertion_claims,
    make_jwt,
    public_jwks,
    tamper,
    unsigned_jwt,
)

JWKS_URI = "https://partner.example.com/.well-known/jwks.json"


async def verify(
    assertion: str,
    keys: ClientKeySource,
    jti_store: MemoryJtiStore,
    fetcher: JwksFetcher | None = None,
) -> VerifiedAssertion:
    return await verify_client_assertion(
        assertion,
        client_id=CLIENT_ID,
        token_url=TOKEN_URL,
        keys=keys,
        jti_store=jti_store,
        fetcher=fetcher,
        now=NOW,
    )


@pytest.fixture
def inline(rsa_key: RSAKey, ec_key: ECKey) -> ClientKeySource:
    return ClientKeySource(jwks=public_jwks(rsa_key, ec_key))


async def test_valid_rs384_assertion(
    rsa_key: RSAKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    result = await verify(make_jwt(rsa_key, "RS384", assertion_claims()), inline, jti_store)
    assert result.client_id == CLIENT_ID
    assert (result.alg, result.kid, result.jti) == ("RS384", "rsa-1", "nonce-1")
    assert result.expires_at == NOW + timedelta(seconds=240)
    assert jti_store.seen == {(CLIENT_ID, "nonce-1"): result.expires_at}


async def test_valid_es384_assertion(
    ec_key: ECKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    result = await verify(make_jwt(ec_key, "ES384", assertion_claims()), inline, jti_store)
    assert (result.alg, result.kid) == ("ES384", "ec-1")


async def test_aud_may_be_a_list(
    ec_key: ECKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    claims = assertion_claims(aud=["https://other.example", TOKEN_URL])
    assert await verify(make_jwt(ec_key, "ES384", claims), inline, jti_store)


async def test_without_kid_every_fitting_key_is_tried(
    rsa_key: RSAKey, other_rsa_key: RSAKey, jti_store: MemoryJtiStore
) -> None:
    keys = ClientKeySource(jwks={"keys": public_jwks(other_rsa_key, rsa_key)["keys"]})
    token = make_jwt(rsa_key, "RS384", assertion_claims(), header={"kid": None})
    assert (await verify(token, keys, jti_store)).kid is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aud": "https://handoff.example.org/fhir"}, "'aud'"),
        ({"aud": ["https://a.example", "https://b.example"]}, "'aud'"),
        ({"exp": epoch(NOW) + 600}, "more than 5 minutes"),
        ({"exp": epoch(NOW) - 120}, "expired"),
        ({"exp": None}, "numeric 'exp'"),
        ({"exp": "soon"}, "numeric 'exp'"),
        ({"sub": "someone-else"}, "'sub' must equal"),
        ({"iss": "someone-else", "sub": "someone-else"}, "'iss' is not the client id"),
        ({"jti": None}, "'jti'"),
        ({"jti": ""}, "'jti'"),
        ({"jti": "x" * 300}, "'jti'"),
        ({"nbf": epoch(NOW) + 120}, "'nbf' is in the future"),
        ({"iat": epoch(NOW) + 120}, "'iat' is in the future"),
    ],
)
async def test_bad_claims_are_invalid_client(
    rsa_key: RSAKey,
    inline: ClientKeySource,
    jti_store: MemoryJtiStore,
    overrides: dict[str, Any],
    message: str,
) -> None:
    token = make_jwt(rsa_key, "RS384", assertion_claims(**overrides))
    with pytest.raises(InvalidClientError, match=message) as info:
        await verify(token, inline, jti_store)
    assert info.value.as_json()["error"] == "invalid_client"
    assert info.value.status == 401
    assert jti_store.seen == {}  # a rejected assertion does not burn its jti


async def test_small_clock_skew_is_tolerated(
    rsa_key: RSAKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    claims = assertion_claims(exp=epoch(NOW) - 10, iat=epoch(NOW) + 10)
    assert await verify(make_jwt(rsa_key, "RS384", claims), inline, jti_store)


async def test_alg_none_is_rejected(inline: ClientKeySource, jti_store: MemoryJtiStore) -> None:
    token = unsigned_jwt({"alg": "none", "typ": "JWT"}, assertion_claims())
    with pytest.raises(InvalidClientError, match="alg 'none' not allowed"):
        await verify(token, inline, jti_store)


async def test_hs256_is_rejected(inline: ClientKeySource, jti_store: MemoryJtiStore) -> None:
    secret = OctKey.generate_key(256, parameters={"kid": "rsa-1"})
    token = make_jwt(secret, "HS256", assertion_claims())
    with pytest.raises(InvalidClientError, match="alg 'HS256' not allowed"):
        await verify(token, inline, jti_store)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS384"])
async def test_other_asymmetric_algs_are_rejected(
    alg: str, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    token = unsigned_jwt({"alg": alg, "kid": "rsa-1"}, assertion_claims(), "c2ln")
    with pytest.raises(InvalidClientError, match="not allowed"):
        await verify(token, inline, jti_store)


async def test_unknown_kid(rsa_key: RSAKey, jti_store: MemoryJtiStore) -> None:
    keys = ClientKeySource(jwks=public_jwks(rsa_key))
    token = make_jwt(rsa_key, "RS384", assertion_claims(), header={"kid": "nope"})
    with pytest.raises(InvalidClientError, match="no registered key of the client matches kid"):
        await verify(token, keys, jti_store)


async def test_kid_of_wrong_key_type_does_not_match(
    ec_key: ECKey, rsa_key: RSAKey, jti_store: MemoryJtiStore
) -> None:
    # ES384 header naming the RSA key: kty must fit alg.
    keys = ClientKeySource(jwks=public_jwks(rsa_key))
    token = make_jwt(ec_key, "ES384", assertion_claims(), header={"kid": "rsa-1"})
    with pytest.raises(InvalidClientError, match="no registered key"):
        await verify(token, keys, jti_store)


async def test_tampered_claims_fail_signature(
    rsa_key: RSAKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    token = make_jwt(rsa_key, "RS384", assertion_claims())
    forged = tamper(token, lambda claims: claims.update(jti="nonce-2"))
    with pytest.raises(InvalidClientError, match="signature is invalid"):
        await verify(forged, inline, jti_store)


async def test_signature_by_another_key_with_same_kid(
    other_rsa_key: RSAKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    token = make_jwt(other_rsa_key, "RS384", assertion_claims())
    with pytest.raises(InvalidClientError, match="signature is invalid"):
        await verify(token, inline, jti_store)


async def test_replayed_jti(
    ec_key: ECKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    token = make_jwt(ec_key, "ES384", assertion_claims())
    await verify(token, inline, jti_store)
    with pytest.raises(InvalidClientError, match="already been used"):
        await verify(token, inline, jti_store)
    fresh = make_jwt(ec_key, "ES384", assertion_claims(jti="nonce-2"))
    assert (await verify(fresh, inline, jti_store)).jti == "nonce-2"


async def test_jku_must_be_the_registered_url(
    rsa_key: RSAKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    token = make_jwt(rsa_key, "RS384", assertion_claims(), header={"jku": JWKS_URI})
    with pytest.raises(InvalidClientError, match="'jku'"):
        await verify(token, inline, jti_store)


@pytest.mark.parametrize(
    "assertion", ["", "a.b", "not.a.jwt", "e30.e30.", "W10.e30.sig", "eyJhbGciOiJSUzM4NCJ9.W10.x"]
)
async def test_malformed_assertions(
    assertion: str, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    with pytest.raises(InvalidClientError, match="malformed"):
        await verify(assertion, inline, jti_store)


async def test_crit_header_is_refused(
    rsa_key: RSAKey, inline: ClientKeySource, jti_store: MemoryJtiStore
) -> None:
    token = unsigned_jwt({"alg": "RS384", "crit": ["exp"], "exp": 1}, assertion_claims(), "c2ln")
    with pytest.raises(InvalidClientError, match="malformed"):
        await verify(token, inline, jti_store)


async def test_client_without_keys(rsa_key: RSAKey, jti_store: MemoryJtiStore) -> None:
    token = make_jwt(rsa_key, "RS384", assertion_claims())
    with pytest.raises(InvalidClientError, match="no registered keys"):
        await verify(token, ClientKeySource(), jti_store)


async def test_keys_from_jwks_uri(rsa_key: RSAKey, jti_store: MemoryJtiStore) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=public_jwks(rsa_key))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        fetcher = JwksFetcher(client)
        keys = ClientKeySource(jwks_uri=JWKS_URI)
        token = make_jwt(rsa_key, "RS384", assertion_claims(), header={"jku": JWKS_URI})
        assert (await verify(token, keys, jti_store, fetcher)).kid == "rsa-1"
    assert [str(r.url) for r in requests] == [JWKS_URI]


async def test_jwks_uri_failure_is_invalid_client(
    rsa_key: RSAKey, jti_store: MemoryJtiStore
) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503))
    async with httpx.AsyncClient(transport=transport) as client:
        token = make_jwt(rsa_key, "RS384", assertion_claims())
        with pytest.raises(InvalidClientError, match="HTTP 503"):
            await verify(token, ClientKeySource(jwks_uri=JWKS_URI), jti_store, JwksFetcher(client))


def test_assertion_client_id() -> None:
    assert assertion_client_id(unsigned_jwt({"alg": "RS384"}, {"iss": "abc"})) == "abc"
    with pytest.raises(InvalidClientError):
        assertion_client_id(unsigned_jwt({"alg": "RS384"}, {"sub": "abc"}))
    with pytest.raises(InvalidClientError):
        assertion_client_id("garbage")
