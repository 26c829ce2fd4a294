from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, OctKey, RSAKey

from service.auth.keys import KeyRingError, SigningKeyRing
from tests.unit.auth.helpers import NOW

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def test_generate_es384_by_default() -> None:
    ring = SigningKeyRing.generate()
    assert ring.active.alg == "ES384"
    assert ring.active.key.get("crv") == "P-384"
    assert ring.active.kid == ring.active.key.thumbprint()


def test_generate_rs384() -> None:
    ring = SigningKeyRing.generate("RS384")
    assert ring.active.alg == "RS384"
    assert ring.active.key.key_type == "RSA"


def test_public_jwks_has_no_private_members() -> None:
    ring = SigningKeyRing.generate()
    ring.rotate(now=NOW)
    jwks = ring.public_jwks()
    assert len(jwks["keys"]) == 2
    for jwk in jwks["keys"]:
        assert not PRIVATE_MEMBERS & set(jwk)
        assert jwk["use"] == "sig"
        assert jwk["alg"] == "ES384"
    assert {k["kid"] for k in jwks["keys"]} == {k.kid for k in ring.keys}


def test_rotate_keeps_old_key_published_until_retired() -> None:
    ring = SigningKeyRing.generate()
    old = ring.active
    new = ring.rotate(now=NOW)
    assert ring.active == new
    assert new.kid != old.kid
    retired = ring.get(old.kid)
    assert retired is not None and retired.retired_at == NOW

    # tokens signed by the old key live at most 300 s: the caller passes now - 300 s
    max_lifetime = timedelta(seconds=300)
    later = NOW + max_lifetime
    assert ring.retire_before(later - max_lifetime) == []
    assert ring.get(old.kid) is not None
    assert ring.retire_before(later + timedelta(seconds=1) - max_lifetime) == [old.kid]
    assert ring.get(old.kid) is None
    assert [k["kid"] for k in ring.public_jwks()["keys"]] == [new.kid]


def test_rotate_can_switch_algorithm() -> None:
    ring = SigningKeyRing.generate()
    assert ring.rotate(now=NOW, alg="RS384").alg == "RS384"


def test_retire_before_never_drops_the_active_key() -> None:
    ring = SigningKeyRing.generate()
    assert ring.retire_before(NOW + timedelta(days=365)) == []
    assert ring.active


def test_round_trip_through_json() -> None:
    ring = SigningKeyRing.generate()
    old = ring.active.kid
    ring.rotate(now=NOW)
    data = json.loads(json.dumps(ring.to_dict()))
    loaded = SigningKeyRing.from_dict(data)
    assert loaded.active.kid == ring.active.kid
    assert [(k.kid, k.alg, k.retired_at) for k in loaded.keys] == [
        (k.kid, k.alg, k.retired_at) for k in ring.keys
    ]
    assert loaded.get(old) is not None and loaded.get(old).retired_at == NOW  # type: ignore[union-attr]
    assert loaded.public_jwks() == ring.public_jwks()
    assert loaded.active.key.is_private


def test_load_plain_jwks_file(tmp_path: Path) -> None:
    first = ECKey.generate_key("P-384", parameters={"kid": "2026-03"})
    second = RSAKey.generate_key(2048, parameters={"kid": "2026-01"})  # no alg: RS384 inferred
    path = tmp_path / "signing-keys.json"
    path.write_text(
        json.dumps(
            {"keys": [dict(first.as_dict(private=True)), dict(second.as_dict(private=True))]}
        )
    )
    ring = SigningKeyRing.from_file(path)
    assert (ring.active.kid, ring.active.alg) == ("2026-03", "ES384")
    old = ring.get("2026-01")
    assert old is not None and old.alg == "RS384" and old.retired_at is None
    # operator-managed keys without a retirement time stay published
    assert ring.retire_before(NOW) == []


def test_active_kid_selects_the_signing_key() -> None:
    keys = [ECKey.generate_key("P-384", parameters={"kid": kid}) for kid in ("a", "b")]
    ring = SigningKeyRing.from_dict(
        {"keys": [dict(k.as_dict(private=True)) for k in keys], "active_kid": "b"}
    )
    assert ring.active.kid == "b"


def _ec(kid: str = "k", crv: str = "P-384", **extra: Any) -> dict[str, Any]:
    key = ECKey.generate_key(crv, parameters={"kid": kid})
    return {**key.as_dict(private=True), **extra}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "non-empty 'keys'"),
        ({"keys": []}, "non-empty 'keys'"),
        ({"keys": ["x"]}, "JSON object"),
        ({"keys": [{"kty": "EC"}]}, "unreadable"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}]}, "private RSA or EC"),
        ({"keys": [_ec(crv="P-256")]}, "cannot sign"),
        ({"keys": [_ec(alg="ES256")]}, "cannot sign"),
        ({"keys": [_ec(alg="RS384")]}, "cannot sign"),
        ({"keys": [_ec(use="enc")]}, "cannot sign"),
        ({"keys": [_ec("a"), _ec("a")]}, "duplicate kid"),
        ({"keys": [_ec("a")], "active_kid": "b"}, "not in the key ring"),
        ({"keys": [_ec("a")], "retired": {"a": 1700000000}}, "active key cannot be retired"),
        ({"keys": [_ec("a"), _ec("b")], "retired": {"b": "yesterday"}}, "epoch seconds"),
    ],
)
def test_unusable_key_material_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        SigningKeyRing.from_dict(data)


def test_public_keys_are_refused() -> None:
    public = ECKey.generate_key("P-384", parameters={"kid": "pub"}).as_dict(private=False)
    with pytest.raises(KeyRingError, match="private"):
        SigningKeyRing.from_dict({"keys": [dict(public)]})


def test_weak_rsa_is_refused() -> None:
    with pytest.warns(UserWarning):
        weak = RSAKey.generate_key(1024, parameters={"kid": "weak"})
    with pytest.raises(KeyRingError, match="2048"):
        SigningKeyRing.from_dict({"keys": [dict(weak.as_dict(private=True))]})


def test_symmetric_keys_are_refused() -> None:
    key = OctKey.generate_key(256, parameters={"kid": "hs"})
    with pytest.raises(KeyRingError):
        SigningKeyRing.from_dict({"keys": [dict(key.as_dict(private=True))]})


def test_bad_json_text() -> None:
    with pytest.raises(KeyRingError, match="JSON"):
        SigningKeyRing.from_json("{not json")
    with pytest.raises(KeyRingError, match="object"):
        SigningKeyRing.from_json("[]")
