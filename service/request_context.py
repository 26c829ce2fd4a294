"""Request-scoped ids for logs and error bodies (never used for authorization)."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("handoff_request_id", default=None)
