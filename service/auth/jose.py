"""Thin layer over joserfc (Authlib's successor to ``authlib.jose``, which 1.9 deprecates).

We parse the protected header ourselves first, so that the algorithm allow-list and key
selection happen before any cryptography, and so callers can map each failure to their own error.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeyParameters, RSAKey, import_key

MAX_TOKEN_LENGTH = 16 * 1024
MIN_RSA_BITS = 2048

# kty (and crv) each JWS algorithm needs.
_ALG_KEY: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}


class JoseFormatError(ValueError):
    """The token is not a well-formed compact JWS carrying a JSON object."""


def split_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, both unverified."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise JoseFormatError("token too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseFormatError("not a compact JWS (three dot-separated parts)")
    header = _b64_json(parts[0], "header")
    if not isinstance(header.get("alg"), str):
        raise JoseFormatError("header has no 'alg'")
    # b64=false (RFC 7797) and crit extensions have no place in a JWT we accept.
    if "crit" in header or "b64" in header:
        raise JoseFormatError("header uses unsupported extensions ('crit'/'b64')")
    return header, _b64_json(parts[1], "payload")


def _b64_json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise JoseFormatError(f"{what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise JoseFormatError(f"{what} is not a JSON object")
    return value


def key_fits(key: Key, alg: str) -> bool:
    """Whether ``key`` can verify ``alg`` signatures (kty, curve, declared alg and use)."""
    wanted = _ALG_KEY.get(alg)
    if wanted is None or key.key_type != wanted[0]:
        return False
    if wanted[1] is not None and key.get("crv") != wanted[1]:
        return False
    if key.get("use") not in (None, "sig"):
        return False
    return key.alg in (None, alg)


def verify_signature(token: str, key: Key, alg: str) -> bool:
    """Check the signature of ``token`` with ``key`` under exactly ``alg``."""
    registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
    try:
        jws.deserialize_compact(token, key, registry=registry)
    except JoseError:
        return False
    return True


def candidate_keys(keys: Iterable[Key], *, kid: str | None, alg: str) -> list[Key]:
    """Keys to try: the one(s) named by ``kid``, else every key fitting ``alg``."""
    fitting = [k for k in keys if key_fits(k, alg)]
    if kid is not None:
        return [k for k in fitting if k.kid == kid]
    return fitting


def import_public_keys(jwks: Mapping[str, Any], *, algorithms: Collection[str]) -> list[Key]:
    """The usable public signature keys of a JWKS; keys we cannot use are skipped, as RFC 7517
    §5 asks, rather than failing the whole set. Private members are discarded."""
    raw_keys = jwks.get("keys")
    if not isinstance(raw_keys, list):
        raise JoseFormatError("JWKS has no 'keys' array")
    kinds = {_ALG_KEY[a][0] for a in algorithms if a in _ALG_KEY}
    keys: list[Key] = []
    for raw in raw_keys:
        if not isinstance(raw, dict) or raw.get("kty") not in kinds or weak_rsa(raw):
            continue
        try:
            key = import_key(raw)
            public = import_key(key.as_dict(private=False))
        except (JoseError, ValueError, TypeError):
            continue
        if isinstance(public, RSAKey | ECKey):
            keys.append(public)
    return keys


def weak_rsa(raw: Mapping[str, Any]) -> bool:
    """An RSA JWK whose modulus is under MIN_RSA_BITS (checked before import, which would
    only warn). Unreadable moduli count as weak."""
    if raw.get("kty") != "RSA":
        return False
    modulus = raw.get("n")
    if not isinstance(modulus, str):
        return True
    try:
        n = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except (binascii.Error, ValueError):
        return True
    return int.from_bytes(n, "big").bit_length() < MIN_RSA_BITS


def generate_signing_key(alg: str, *, rsa_bits: int = 3072) -> Key:
    """A new private key for ``alg`` (RS*/ES*), with its RFC 7638 thumbprint as ``kid``."""
    kind = _ALG_KEY.get(alg)
    if kind is None:
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    parameters: KeyParameters = {"alg": alg, "use": "sig"}
    if kind[0] == "RSA":
        return RSAKey.generate_key(rsa_bits, parameters=parameters, auto_kid=True)
    return ECKey.generate_key(kind[1], parameters=parameters, auto_kid=True)


def sign(header: dict[str, Any], claims: Mapping[str, Any], key: Key, alg: str) -> str:
    payload = json.dumps(dict(claims), separators=(",", ":"), ensure_ascii=False)
    registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
    return jws.serialize_compact({**header, "alg": alg}, payload, key, registry=registry)


def epoch(instant: datetime) -> int:
    """Seconds since the epoch of an aware datetime (naive ones are a bug: refuse them)."""
    if instant.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return math.floor(instant.timestamp())


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def numeric_date(value: object) -> float | None:
    """A JWT NumericDate, or None when the value is not a finite JSON number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value)
