"""Who is calling: the authenticated client, its organization and what it may do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.auth.scopes import ScopeSet


@dataclass(frozen=True)
class Principal:
    """An authenticated backend client, passed explicitly to workflows.

    ``organization`` is a relative reference (``Organization/123``): the tenant whose data the
    client acts for; None for clients bound to no organization (e.g. administrators).
    ``emergency`` marks a break-the-glass token; workflows decide what it relaxes and audit it.
    """

    client_id: str
    organization: str | None
    scopes: ScopeSet
    is_admin: bool
    token_id: str | None
    issuer: str
    emergency: bool = False
    expires_at: datetime | None = None
