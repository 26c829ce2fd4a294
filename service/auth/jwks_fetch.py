"""Fetch and cache JWK Sets from a client's (or an external IdP's) ``jwks_uri``.

HTTPS only, no redirects, bounded size and time. Cached per URL for ``ttl_seconds``, shortened by
the publisher's ``Cache-Control: max-age`` (SMART: honour it, never exceed it). A kid we have
not seen triggers one early refetch, at most once per ``refetch_interval_seconds`` per URL, so
that key rotation works without letting forged kids hammer the publisher.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from joserfc.jwk import Key

from service.auth.errors import JwksFetchError
from service.auth.jose import JoseFormatError, import_public_keys

DEFAULT_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)


@dataclass
class _Entry:
    keys: tuple[Key, ...]
    fetched_at: float
    expires_at: float


class JwksFetcher:
    """One per process (held by the app, not a module global); share its ``httpx.AsyncClient``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        ttl_seconds: float = 300,
        refetch_interval_seconds: float = 30,
        timeout_seconds: float = 5,
        max_bytes: int = 64 * 1024,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        allow_insecure_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._refetch_interval = refetch_interval_seconds
        self._timeout = timeout_seconds
        self._max_bytes = max_bytes
        self._algorithms = tuple(algorithms)
        self._allow_http = allow_insecure_http  # tests and local development only
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get_keys(self, url: str, *, kid: str | None = None) -> tuple[Key, ...]:
        """The public keys published at ``url``.

        With ``kid``: if no cached key has it, refetch (rate-limited) before answering; the
        caller still checks the result, since the kid may simply not exist.
        """
        self._check_url(url)
        async with self._locks.setdefault(url, asyncio.Lock()):
            now = self._clock()
            entry = self._cache.get(url)
            if entry is None or now >= entry.expires_at or self._may_refetch(entry, kid, now):
                entry = await self._fetch(url)
            return entry.keys

    def _may_refetch(self, entry: _Entry, kid: str | None, now: float) -> bool:
        """An unknown kid may mean the publisher rotated keys: refetch, rate-limited."""
        return (
            kid is not None
            and all(k.kid != kid for k in entry.keys)
            and now - entry.fetched_at >= self._refetch_interval
        )

    def invalidate(self, url: str) -> None:
        """Forget a URL (e.g. after a client's registration changes)."""
        self._cache.pop(url, None)

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        allowed = ("https", "http") if self._allow_http else ("https",)
        if parts.scheme not in allowed or not parts.hostname:
            raise JwksFetchError("jwks_uri must be an absolute https:// URL")

    async def _fetch(self, url: str) -> _Entry:
        try:
            # httpx timeouts are per read; asyncio.timeout bounds the whole exchange.
            async with (
                asyncio.timeout(self._timeout),
                self._client.stream(
                    "GET",
                    url,
                    headers={"Accept": "application/jwk-set+json, application/json"},
                    timeout=self._timeout,
                    follow_redirects=False,
                ) as response,
            ):
                if response.status_code != 200:
                    raise JwksFetchError(f"jwks_uri answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self._max_bytes:
                        raise JwksFetchError(f"jwks_uri document exceeds {self._max_bytes} bytes")
                cache_control = response.headers.get("cache-control", "")
        except (httpx.HTTPError, TimeoutError) as exc:
            raise JwksFetchError(f"jwks_uri could not be fetched ({type(exc).__name__})") from exc
        try:
            document = json.loads(bytes(body))
            if not isinstance(document, dict):
                raise JoseFormatError("JWKS is not a JSON object")
            keys = tuple(import_public_keys(document, algorithms=self._algorithms))
        except ValueError as exc:  # JoseFormatError included
            raise JwksFetchError("jwks_uri did not return a JWK Set") from exc
        now = self._clock()
        entry = _Entry(keys, now, now + self._lifetime(cache_control))
        self._cache[url] = entry
        return entry

    def _lifetime(self, cache_control: str) -> float:
        if _NO_CACHE.search(cache_control):
            return 0
        match = _MAX_AGE.search(cache_control)
        if match:
            return min(self._ttl, float(match.group(1)))
        return self._ttl
