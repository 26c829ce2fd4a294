"""Client identifiers and secrets (for client_secret_basic / client_secret_post).

Secrets are stored as ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` with a per-secret salt.
Hashing costs ~50 ms of CPU: call the ``a*`` variants from async code so the event loop runs on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets

_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAXMEM = 64 * 1024 * 1024
# Verified against when the client is unknown, so timing does not reveal which ids exist.
_DUMMY_SALT = b"\x00" * _SALT_BYTES


def generate_client_id() -> str:
    """128 bits in lowercase hex: never starts with "-" (which a shell or ``handoff clients
    disable <id>`` would read as an option, as URL-safe base64 does one time in 64) and survives
    case-folding and copying by hand."""
    return secrets.token_hex(16)


def generate_client_secret() -> str:
    """256 bits of randomness, URL-safe; shown once, then only its hash is kept."""
    return secrets.token_urlsafe(32)


def hash_client_secret(secret: str) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(secret, salt, n=_N, r=_R, p=_P)
    return "$".join(("scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)))


def verify_client_secret(secret: str, encoded: str | None) -> bool:
    """Constant-time check of ``secret`` against a stored hash.

    Pass ``encoded=None`` for an unknown client: the same work is done and False returned.
    A stored value in an unknown format never verifies.
    """
    parsed = _parse(encoded) if encoded is not None else None
    if parsed is None:
        _scrypt(secret, _DUMMY_SALT, n=_N, r=_R, p=_P)
        return False
    n, r, p, salt, expected = parsed
    return hmac.compare_digest(_scrypt(secret, salt, n=n, r=r, p=p), expected)


def needs_rehash(encoded: str) -> bool:
    """Whether a stored hash uses weaker parameters than today's."""
    parsed = _parse(encoded)
    return parsed is None or parsed[:3] != (_N, _R, _P)


async def ahash_client_secret(secret: str) -> str:
    return await asyncio.to_thread(hash_client_secret, secret)


async def averify_client_secret(secret: str, encoded: str | None) -> bool:
    return await asyncio.to_thread(verify_client_secret, secret, encoded)


def _scrypt(secret: str, salt: bytes, *, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_HASH_BYTES
    )


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = (int(v) for v in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return None
    # Refuse parameters that would make verification a denial of service or trivially weak.
    if n < 2**10 or n & (n - 1) or r < 1 or not 1 <= p <= 16:
        return None
    if 128 * n * r > _MAXMEM // 2:  # scrypt needs ~128*n*r bytes
        return None
    if len(digest) != _HASH_BYTES or not salt:
        return None
    return n, r, p, salt, digest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
