from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, RSAKey

from service.auth.errors import InvalidClientError, JwksFetchError
from service.auth.jwks_fetch import JwksFetcher
from tests.unit.auth.helpers import public_jwks

URL = "https://partner.example.com/jwks.json"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Publisher:
    """A mocked JWKS host: serves whatever ``respond`` returns and counts requests."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)


def serving(document: Any, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=document, headers=headers)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[Publisher], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(publisher: Publisher) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.MockTransport(publisher))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_cache_hit(
    rsa_key: RSAKey, clock: FakeClock, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key)))
    fetcher = JwksFetcher(client_for(publisher), clock=clock)
    first = await fetcher.get_keys(URL)
    clock.now += 299
    second = await fetcher.get_keys(URL, kid="rsa-1")
    assert [k.kid for k in first] == [k.kid for k in second] == ["rsa-1"]
    assert not first[0].is_private
    assert len(publisher.requests) == 1
    assert publisher.requests[0].headers["accept"].startswith("application/jwk-set+json")


async def test_ttl_expiry_refetches(
    rsa_key: RSAKey, clock: FakeClock, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key)))
    fetcher = JwksFetcher(client_for(publisher), ttl_seconds=300, clock=clock)
    await fetcher.get_keys(URL)
    clock.now += 300
    await fetcher.get_keys(URL)
    assert len(publisher.requests) == 2


async def test_cache_control_max_age_shortens_ttl(
    rsa_key: RSAKey, clock: FakeClock, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key), **{"Cache-Control": "public, max-age=60"}))
    fetcher = JwksFetcher(client_for(publisher), ttl_seconds=300, clock=clock)
    await fetcher.get_keys(URL)
    clock.now += 59
    await fetcher.get_keys(URL)
    assert len(publisher.requests) == 1
    clock.now += 1
    await fetcher.get_keys(URL)
    assert len(publisher.requests) == 2


async def test_cache_control_longer_than_ttl_is_capped(
    rsa_key: RSAKey, clock: FakeClock, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key), **{"Cache-Control": "max-age=86400"}))
    fetcher = JwksFetcher(client_for(publisher), ttl_seconds=300, clock=clock)
    await fetcher.get_keys(URL)
    clock.now += 300
    await fetcher.get_keys(URL)
    assert len(publisher.requests) == 2


async def test_no_store_is_not_cached(
    rsa_key: RSAKey, clock: FakeClock, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key), **{"Cache-Control": "no-store"}))
    fetcher = JwksFetcher(client_for(publisher), clock=clock)
    await fetcher.get_keys(URL)
    await fetcher.get_keys(URL)
    assert len(publisher.requests) == 2


async def test_unknown_kid_refetches_once_then_rate_limits(
    rsa_key: RSAKey,
    ec_key: ECKey,
    clock: FakeClock,
    client_for: Callable[[Publisher], httpx.AsyncClient],
) -> None:
    documents = [public_jwks(rsa_key), public_jwks(rsa_key, ec_key)]
    publisher = Publisher(lambda request: httpx.Response(200, json=documents.pop(0)))
    fetcher = JwksFetcher(client_for(publisher), refetch_interval_seconds=30, clock=clock)
    await fetcher.get_keys(URL)

    clock.now += 1  # too soon after the first fetch: a forged kid must not trigger a fetch
    assert [k.kid for k in await fetcher.get_keys(URL, kid="ec-1")] == ["rsa-1"]
    assert len(publisher.requests) == 1

    clock.now += 30  # the publisher rotated in a new key
    assert {k.kid for k in await fetcher.get_keys(URL, kid="ec-1")} == {"rsa-1", "ec-1"}
    assert len(publisher.requests) == 2

    assert {k.kid for k in await fetcher.get_keys(URL, kid="ec-1")} == {"rsa-1", "ec-1"}
    assert len(publisher.requests) == 2  # known kid: served from cache


async def test_unknown_kid_refetch_is_rate_limited_per_interval(
    rsa_key: RSAKey, clock: FakeClock, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key)))
    fetcher = JwksFetcher(client_for(publisher), refetch_interval_seconds=30, clock=clock)
    await fetcher.get_keys(URL)
    clock.now += 31
    for kid in ("forged-1", "forged-2", "forged-3"):
        await fetcher.get_keys(URL, kid=kid)
    assert len(publisher.requests) == 2


@pytest.mark.parametrize(
    "url", ["http://partner.example.com/jwks.json", "ftp://x/jwks", "/jwks.json", "https://"]
)
async def test_non_https_urls_are_rejected_without_a_request(
    url: str, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving({"keys": []}))
    fetcher = JwksFetcher(client_for(publisher))
    with pytest.raises(JwksFetchError, match="https://"):
        await fetcher.get_keys(url)
    assert publisher.requests == []


async def test_http_allowed_with_test_override(
    rsa_key: RSAKey, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key)))
    fetcher = JwksFetcher(client_for(publisher), allow_insecure_http=True)
    assert len(await fetcher.get_keys("http://localhost:8080/jwks")) == 1


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(500, text="oops"), "HTTP 500"),
        (httpx.Response(404), "HTTP 404"),
        (httpx.Response(302, headers={"Location": "http://evil.example/jwks"}), "HTTP 302"),
        (httpx.Response(200, text="<html>"), "did not return a JWK Set"),
        (httpx.Response(200, json=[1, 2]), "did not return a JWK Set"),
        (httpx.Response(200, json={"no": "keys"}), "did not return a JWK Set"),
        (httpx.Response(200, content=b'{"keys": [' + b" " * 70_000 + b"]}"), "exceeds"),
    ],
)
async def test_bad_responses_are_invalid_client(
    response: httpx.Response,
    message: str,
    client_for: Callable[[Publisher], httpx.AsyncClient],
) -> None:
    publisher = Publisher(lambda request: response)
    fetcher = JwksFetcher(client_for(publisher))
    with pytest.raises(InvalidClientError, match=message) as info:
        await fetcher.get_keys(URL)
    assert info.value.as_json()["error"] == "invalid_client"
    assert len(publisher.requests) == 1  # redirects are not followed


async def test_network_error_is_invalid_client(
    client_for: Callable[[Publisher], httpx.AsyncClient],
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fetcher = JwksFetcher(client_for(Publisher(refuse)))
    with pytest.raises(JwksFetchError, match="ConnectError"):
        await fetcher.get_keys(URL)


async def test_failed_fetch_is_not_cached(
    rsa_key: RSAKey, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    responses = [httpx.Response(500), httpx.Response(200, json=public_jwks(rsa_key))]
    publisher = Publisher(lambda request: responses.pop(0))
    fetcher = JwksFetcher(client_for(publisher))
    with pytest.raises(JwksFetchError):
        await fetcher.get_keys(URL)
    assert [k.kid for k in await fetcher.get_keys(URL)] == ["rsa-1"]


async def test_unusable_keys_are_skipped_and_private_parts_dropped(
    rsa_key: RSAKey, ec_key: ECKey, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    with pytest.warns(SecurityWarning):
        weak = RSAKey.generate_key(1024, parameters={"kid": "weak"})
    document = {
        "keys": [
            dict(OctKey.generate_key(256, parameters={"kid": "secret"}).as_dict(private=True)),
            dict(weak.as_dict()),
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            {"kty": "PQ", "kid": "future"},
            "not-a-key",
            dict(ec_key.as_dict(private=True)),  # a careless publisher
            dict(rsa_key.as_dict()),
        ]
    }
    fetcher = JwksFetcher(client_for(Publisher(serving(document))))
    keys = await fetcher.get_keys(URL)
    assert [k.kid for k in keys] == ["ec-1", "rsa-1"]
    assert all(not k.is_private for k in keys)


async def test_invalidate_forces_refetch(
    rsa_key: RSAKey, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key)))
    fetcher = JwksFetcher(client_for(publisher))
    await fetcher.get_keys(URL)
    fetcher.invalidate(URL)
    await fetcher.get_keys(URL)
    assert len(publisher.requests) == 2


async def test_slow_publisher_times_out() -> None:
    async def stall(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"keys": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(stall)) as client:
        fetcher = JwksFetcher(client, timeout_seconds=0.05)
        with pytest.raises(JwksFetchError, match="TimeoutError"):
            await fetcher.get_keys(URL)


async def test_concurrent_requests_share_one_fetch(
    rsa_key: RSAKey, client_for: Callable[[Publisher], httpx.AsyncClient]
) -> None:
    publisher = Publisher(serving(public_jwks(rsa_key)))
    fetcher = JwksFetcher(client_for(publisher))
    results = await asyncio.gather(*(fetcher.get_keys(URL) for _ in range(5)))
    assert all(len(keys) == 1 for keys in results)
    assert len(publisher.requests) == 1
