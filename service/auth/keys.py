"""The server's own token-signing keys: one active key signs, older keys still verify.

Serialized form (a JWKS with two extra members, so a plain JWKS file also loads)::

    {"keys": [<private JWK with kid, alg, use=sig>, ...],
     "active_kid": "<kid>",                   # optional: defaults to the first key
     "retired": {"<kid>": <epoch seconds>}}   # optional: when each old key stopped signing

Rotation: ``rotate()`` retires the active key (it stays published so tokens it signed keep
verifying) and makes a fresh one active; ``retire_before(now - max token lifetime)`` then drops
keys retired before any token they signed could still be valid. Keys in a loaded file that are
neither active nor marked retired stay published until an operator removes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, RSAKey, import_key

from service.auth.jose import (
    MIN_RSA_BITS,
    epoch,
    from_epoch,
    generate_signing_key,
    key_fits,
    weak_rsa,
)

SigningAlgorithm = Literal["ES384", "RS384"]
SIGNING_ALGORITHMS: tuple[SigningAlgorithm, ...] = ("ES384", "RS384")


class KeyRingError(ValueError):
    """The key material is unusable (not private, wrong algorithm, duplicate kid...)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: SigningAlgorithm
    key: Key  # private
    retired_at: datetime | None = None

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False, kid=self.kid, alg=self.alg, use="sig"))


class SigningKeyRing:
    """Private signing keys with kids; not thread-safe, mutate from one event loop."""

    def __init__(self, keys: list[SigningKey], *, active_kid: str) -> None:
        kids = [k.kid for k in keys]
        if len(set(kids)) != len(kids):
            raise KeyRingError("duplicate kid in key ring")
        if active_kid not in kids:
            raise KeyRingError(f"active kid {active_kid!r} is not in the key ring")
        self._keys = list(keys)
        self._active_kid = active_kid

    @classmethod
    def generate(cls, alg: SigningAlgorithm = "ES384") -> SigningKeyRing:
        key = _new_key(alg)
        return cls([key], active_kid=key.kid)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SigningKeyRing:
        raw_keys = data.get("keys")
        if not isinstance(raw_keys, list) or not raw_keys:
            raise KeyRingError("key ring JSON needs a non-empty 'keys' array")
        retired_raw = data.get("retired", {})
        if not isinstance(retired_raw, dict):
            raise KeyRingError("'retired' must map kid to epoch seconds")
        keys = [_load_key(raw, retired_raw) for raw in raw_keys]
        active = data.get("active_kid", keys[0].kid)
        if not isinstance(active, str):
            raise KeyRingError("'active_kid' must be a string")
        if any(k.kid == active and k.retired_at is not None for k in keys):
            raise KeyRingError("the active key cannot be retired")
        return cls(keys, active_kid=active)

    @classmethod
    def from_json(cls, text: str) -> SigningKeyRing:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise KeyRingError("key ring is not valid JSON") from exc
        if not isinstance(data, dict):
            raise KeyRingError("key ring JSON must be an object")
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> SigningKeyRing:
        """Load HANDOFF_AUTH_SIGNING_KEYS_FILE (a private JWKS, e.g. from a Kubernetes Secret)."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def to_dict(self) -> dict[str, Any]:
        """Private serialization for the database; treat it as a secret."""
        return {
            "keys": [
                dict(k.key.as_dict(private=True, kid=k.kid, alg=k.alg, use="sig"))
                for k in self._keys
            ],
            "active_kid": self._active_kid,
            "retired": {k.kid: epoch(k.retired_at) for k in self._keys if k.retired_at},
        }

    @property
    def active(self) -> SigningKey:
        return next(k for k in self._keys if k.kid == self._active_kid)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return tuple(self._keys)

    def get(self, kid: str) -> SigningKey | None:
        return next((k for k in self._keys if k.kid == kid), None)

    def public_jwks(self) -> dict[str, Any]:
        """The body of GET /auth/jwks: every key that may still have live tokens."""
        return {"keys": [k.public_jwk() for k in self._keys]}

    def rotate(self, *, now: datetime, alg: SigningAlgorithm | None = None) -> SigningKey:
        """Retire the active key at ``now`` and make a new one (same algorithm by default)."""
        old = self.active
        new = _new_key(alg or old.alg)
        self._keys = [
            SigningKey(k.kid, k.alg, k.key, now) if k.kid == old.kid else k for k in self._keys
        ]
        self._keys.append(new)
        self._active_kid = new.kid
        return new

    def retire_before(self, instant: datetime) -> list[str]:
        """Drop keys retired before ``instant`` (pass now - max token lifetime); their kids."""
        cutoff = epoch(instant)
        dropped = [
            k.kid for k in self._keys if k.retired_at is not None and epoch(k.retired_at) < cutoff
        ]
        self._keys = [k for k in self._keys if k.kid not in dropped]
        return dropped


def _new_key(alg: SigningAlgorithm) -> SigningKey:
    key = generate_signing_key(alg)
    assert key.kid is not None  # generate_signing_key sets the thumbprint kid
    return SigningKey(key.kid, alg, key)


def _load_key(raw: object, retired: Mapping[str, Any]) -> SigningKey:
    if not isinstance(raw, dict):
        raise KeyRingError("each key must be a JSON object")
    if weak_rsa(raw):
        raise KeyRingError(f"RSA signing keys need at least {MIN_RSA_BITS} bits")
    try:
        key = import_key(raw)
    except (JoseError, ValueError, TypeError) as exc:
        raise KeyRingError(f"unreadable key: {exc}") from exc
    if not isinstance(key, RSAKey | ECKey) or not key.is_private:
        raise KeyRingError("signing keys must be private RSA or EC keys")
    alg = raw.get("alg") or ("RS384" if isinstance(key, RSAKey) else "ES384")
    if alg not in SIGNING_ALGORITHMS or not key_fits(key, alg):
        raise KeyRingError(f"key cannot sign with {alg!r}; use ES384 (P-384) or RS384")
    kid = raw.get("kid") or key.thumbprint()
    if not isinstance(kid, str):
        raise KeyRingError("'kid' must be a string")
    retired_at = retired.get(kid)
    if retired_at is not None and (isinstance(retired_at, bool) or not isinstance(retired_at, int)):
        raise KeyRingError(f"retirement time of {kid!r} must be epoch seconds")
    signing_alg: SigningAlgorithm = "RS384" if alg == "RS384" else "ES384"
    return SigningKey(kid, signing_alg, key, from_epoch(retired_at) if retired_at else None)
