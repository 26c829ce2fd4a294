"""Fixtures: generated keys (session-scoped: RSA generation is slow) and a JtiStore."""

from __future__ import annotations

import pytest
from joserfc.jwk import ECKey, RSAKey

from tests.unit.auth.helpers import MemoryJtiStore


@pytest.fixture(scope="session")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="session")
def other_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="session")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "ec-1"})


@pytest.fixture
def jti_store() -> MemoryJtiStore:
    return MemoryJtiStore()
