"""Builders and fakes shared by the auth unit tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from joserfc.jwk import Key

from service.auth.jose import epoch, sign

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOKEN_URL = "https://handoff.example.org/auth/token"
CLIENT_ID = "partner-clinic"


class MemoryJtiStore:
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], datetime] = {}

    async def remember(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        if (client_id, jti) in self.seen:
            return False
        self.seen[(client_id, jti)] = expires_at
        return True


def public_jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [dict(k.as_dict(private=False)) for k in keys]}


def assertion_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": TOKEN_URL,
        "exp": epoch(NOW) + 240,
        "iat": epoch(NOW),
        "jti": "nonce-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def make_jwt(
    key: Key, alg: str, claims: dict[str, Any], *, header: dict[str, Any] | None = None
) -> str:
    head = {"typ": "JWT", "kid": key.kid, **(header or {})}
    return sign({k: v for k, v in head.items() if v is not None}, claims, key, alg)


def unsigned_jwt(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.{signature}"


def tamper(token: str, edit: Callable[[dict[str, Any]], None]) -> str:
    """Change the claims but keep the original signature."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    edit(claims)
    raw = json.dumps(claims).encode()
    return f"{head}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}.{signature}"
