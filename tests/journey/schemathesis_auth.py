"""Schemathesis hooks for tests/journey/test_openapi_conformance.py (loaded through
``SCHEMATHESIS_HOOKS``): the demo jail's access token, fetched again before it expires (tokens
live five minutes; a long run with one token ended in 401s)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import schemathesis

BASE_URL_ENV = "HANDOFF_CONFORMANCE_BASE_URL"


@schemathesis.auth(refresh_interval=120)
class DemoJailToken:
    def get(self, case: Any, context: Any) -> str:
        answer = httpx.post(
            f"{os.environ[BASE_URL_ENV]}/auth/token",
            data={"grant_type": "client_credentials"},
            auth=("demo-jail", "demo-jail-secret"),
            timeout=20,
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
