"""Authentication use cases: issuing access tokens (SMART Backend Services) and turning a
bearer token into a Principal.

One ``Authenticator`` per app (built in the lifespan, kept on ``app.state``); it holds only
caches (the signing key ring, fetched JWKS), never state another replica would need: the ring
lives in the database (or a mounted key file), client status is read from the database unless
PostgreSQL has promised to announce its changes (storage/client_status.py), and used assertion
ids are unique rows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth.assertions import ClientKeySource, verify_client_assertion
from service.auth.client_secrets import averify_client_secret
from service.auth.errors import (
    InvalidClientError,
    TokenAudienceError,
    TokenIssuerError,
    TokenSignatureError,
)
from service.auth.jwks_fetch import JwksFetcher
from service.auth.keys import SigningKeyRing
from service.auth.principal import Principal
from service.auth.scopes import ScopeSet, grant
from service.auth.token_endpoint import parse_token_request, token_response
from service.auth.tokens import (
    ExternalIssuerVerifier,
    LocalTokenVerifier,
    VerifiedTokenCache,
    issue_access_token,
    peek_issuer,
)
from service.errors import AuthenticationError
from service.settings import Settings
from service.storage import clients as store
from service.storage.client_status import client_status
from service.storage.db import read_connection, write_transaction

RING_RELOAD_SECONDS = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Authenticator:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        settings: Settings,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.http = http or httpx.AsyncClient(timeout=5.0)
        self.fetcher = JwksFetcher(self.http, allow_insecure_http=settings.auth_allow_insecure_jwks)
        self.jti_store = store.DatabaseJtiStore(engine)
        self._ring: SigningKeyRing | None = None
        self._ring_loaded = 0.0
        self.verified_tokens = VerifiedTokenCache()

    async def close(self) -> None:
        await self.http.aclose()

    # --- signing keys ---------------------------------------------------------------------

    async def ring(self, *, refresh: bool = False) -> SigningKeyRing:
        """The signing keys: from the key file, else the database row (created on first use)."""
        fresh = time.monotonic() - self._ring_loaded < RING_RELOAD_SECONDS
        if self._ring is not None and fresh and not refresh:
            return self._ring
        if self.settings.auth_signing_keys_file:
            self._ring = SigningKeyRing.from_file(self.settings.auth_signing_keys_file)
        else:
            async with read_connection(self.engine) as conn:
                stored = await store.load_ring(conn)
            if stored is None:
                stored = await store.create_ring_if_absent(
                    self.engine, SigningKeyRing.generate().to_dict(), updated=utcnow()
                )
            self._ring = SigningKeyRing.from_dict(stored)
        self._ring_loaded = time.monotonic()
        return self._ring

    async def rotate_keys(self) -> str:
        """New active key in the database ring; old keys verify until their tokens expire."""
        if self.settings.auth_signing_keys_file:
            raise RuntimeError("keys come from HANDOFF_AUTH_SIGNING_KEYS_FILE: rotate that file")
        await self.ring()
        async with write_transaction(self.engine) as conn:
            await store.lock_ring(conn)
            stored = await store.load_ring(conn)
            ring = SigningKeyRing.from_dict(stored) if stored else SigningKeyRing.generate()
            now = utcnow()
            key = ring.rotate(now=now)
            ring.retire_before(now - timedelta(seconds=self.settings.token_lifetime_seconds + 60))
            await store.save_ring(conn, ring.to_dict(), updated=now)
        self._ring = None
        return key.kid

    # --- token endpoint -------------------------------------------------------------------

    async def issue_token(
        self,
        form: Iterable[tuple[str, str]],
        *,
        authorization: str | None,
        token_url: str,
        issuer: str,
        audience: str,
    ) -> dict[str, Any]:
        request = parse_token_request(form, authorization=authorization)
        async with read_connection(self.engine) as conn:
            client = await store.get_client(conn, request.client_id)
        if client is None or client.disabled:
            raise InvalidClientError("unknown or disabled client")
        now = utcnow()
        if request.auth_method == "private_key_jwt":
            if not (client.jwks or client.jwks_uri):
                raise InvalidClientError("this client has no registered keys; use its secret")
            assert request.client_assertion is not None
            await verify_client_assertion(
                request.client_assertion,
                client_id=client.client_id,
                token_url=token_url,
                keys=ClientKeySource(jwks=client.jwks, jwks_uri=client.jwks_uri),
                jti_store=self.jti_store,
                fetcher=self.fetcher,
                now=now,
            )
            if random.random() < 0.01:
                async with write_transaction(self.engine) as conn:
                    await store.purge_used_assertions(conn, now - timedelta(hours=1))
        elif not await averify_client_secret(request.client_secret or "", client.secret_hash):
            raise InvalidClientError("client authentication failed")
        granted = grant(request.scope or None, ScopeSet.parse(client.scopes))
        issued = issue_access_token(
            client_id=client.client_id,
            organization=client.organization,
            scopes=granted,
            ring=await self.ring(),
            issuer=issuer,
            audience=audience,
            now=now,
            lifetime_seconds=self.settings.token_lifetime_seconds,
        )
        return token_response(issued, granted)

    # --- bearer tokens --------------------------------------------------------------------

    async def authenticate(
        self, authorization: str | None, *, issuer: str, audience: str
    ) -> Principal:
        if not authorization:
            raise AuthenticationError(
                "An access token is required: get one from /auth/token (client_credentials) "
                "and send it as 'Authorization: Bearer <token>'"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Use 'Authorization: Bearer <access token>'")
        token = token.strip()
        now = utcnow()
        ring = await self.ring()
        external = self.settings.auth_issuer
        # A token this server signed and has verified before needs no look at its issuer.
        ours = self.verified_tokens.lookup(token, ring) is not None
        if external and not ours and peek_issuer(token) == external:
            verifier = ExternalIssuerVerifier(
                issuer=external,
                jwks_url=self.settings.auth_jwks_url or "",
                audience=self.settings.auth_audience or audience,
                fetcher=self.fetcher,
                client_claim=self.settings.auth_client_claim,
                organization_claim=self.settings.auth_organization_claim,
            )
            return await verifier.verify(token, now=now)
        local = LocalTokenVerifier(
            ring=ring, issuer=issuer, audience=audience, cache=self.verified_tokens
        )
        try:
            try:
                principal = await local.verify(token, now=now)
            except TokenSignatureError:
                # Another replica may have rotated the keys moments ago: reload once, then judge.
                local.ring = await self.ring(refresh=True)
                principal = await local.verify(token, now=now)
        except (TokenIssuerError, TokenAudienceError) as exc:
            if self.settings.public_base_url:
                raise
            raise type(exc)(
                f"{exc.description}. Without HANDOFF_PUBLIC_BASE_URL this server names itself "
                "after the URL each request uses: set HANDOFF_PUBLIC_BASE_URL to the one URL "
                "clients use (e.g. http://localhost:8000)"
            ) from exc
        if not await client_status(self.engine).is_active(principal.client_id):
            raise AuthenticationError("This client has been disabled")
        return principal
