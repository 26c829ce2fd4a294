"""``handoff keys generate``: the private signing-key file the Helm chart's Secret holds, and
the public JWKS, made by the service's own key code and loadable by it."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from service.auth.keys import SigningKeyRing


def handoff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=120
    )


def test_generate_writes_a_private_ring_and_prints_the_public_jwks(tmp_path: Path) -> None:
    out = tmp_path / "signing-keys.jwks.json"
    public_file = tmp_path / "public.jwks.json"
    done = handoff("keys", "generate", "--out", str(out), "--public-out", str(public_file))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    ring = SigningKeyRing.from_file(out)  # what HANDOFF_AUTH_SIGNING_KEYS_FILE loads
    assert ring.active.alg == "ES384"
    printed = json.loads(done.stdout)
    assert printed == json.loads(public_file.read_text()) == ring.public_jwks()
    assert [k["kid"] for k in printed["keys"]] == [ring.active.kid]
    assert not any("d" in k for k in printed["keys"])  # no private part
    assert not (tmp_path / "signing-keys.jwks.json.partial").exists()

    # Never overwritten by accident.
    again = handoff("keys", "generate", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    assert SigningKeyRing.from_file(out).active.kid == ring.active.kid

    # Rotation: the old key stays (retired) so that its tokens verify until they expire.
    rotated = handoff("keys", "generate", "--from", str(out), "--out", str(out), "--alg", "RS384")
    assert rotated.returncode == 0, rotated.stderr
    new = SigningKeyRing.from_file(out)
    assert new.active.kid != ring.active.kid and new.active.alg == "RS384"
    old = new.get(ring.active.kid)
    assert old is not None and old.retired_at is not None
    assert {k["kid"] for k in json.loads(rotated.stdout)["keys"]} == {
        ring.active.kid,
        new.active.kid,
    }


def test_generate_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    bad_alg = handoff("keys", "generate", "--out", str(tmp_path / "k.json"), "--alg", "HS256")
    assert bad_alg.returncode == 2 and "ES384" in bad_alg.stderr
    assert not (tmp_path / "k.json").exists()
    public_only = tmp_path / "public.json"
    public_only.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    refused = handoff("keys", "generate", "--from", str(public_only), "--out", str(tmp_path / "n"))
    assert refused.returncode == 2 and str(public_only) in refused.stderr
    assert not (tmp_path / "n").exists()
