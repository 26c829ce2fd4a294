"""The dashboard's data: GET /v1/measures, called in-process on behalf of the signed-in user.

The dashboard computes nothing itself. For each page it mints a short-lived access token (60 s)
with this server's token machinery, for the registered client ``handoff-dashboard``, carrying
the user's organization (none for an administrator) and the scope
``system/MeasureReport.rs`` (plus ``handoff/admin`` for an administrator), and sends the request
through the whole application (authentication, disclosure rules, suppression, audit) without a
network hop. So a program manager's page shows exactly what ``/v1/measures`` answers a client of
that organization, and every page view leaves the same AuditEvent a client's request would.

``handoff-dashboard`` is registered on first use, without a secret or keys: it cannot get tokens
from /auth/token. ``handoff clients disable handoff-dashboard`` turns the dashboard's data off.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from fastapi import Request

from service.api.deps import get_authenticator
from service.auth.scopes import ADMIN_SCOPE, ScopeSet
from service.auth.tokens import issue_access_token
from service.dashboard.users import DashboardUser
from service.storage.clients import ClientRecord, add_client_if_absent

DASHBOARD_CLIENT_ID = "handoff-dashboard"
MEASURES_SCOPE = "system/MeasureReport.rs"
TOKEN_SECONDS = 60
# The in-process request's own origin: with HANDOFF_PUBLIC_BASE_URL unset, this server names
# itself after the request (token issuer and audience), and localhost is what it calls itself.
_INNER_ORIGIN = "http://localhost"


class MeasuresError(Exception):
    """/v1/measures refused or failed; ``status`` is what the dashboard page answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _ensure_client(request: Request) -> None:
    state = request.app.state
    if getattr(state, "dashboard_client_ready", False):
        return
    await add_client_if_absent(
        state.engine,
        ClientRecord(
            client_id=DASHBOARD_CLIENT_ID,
            name="Program dashboard (/dashboard): reads measures for signed-in people",
            organization=None,
            scopes=f"{MEASURES_SCOPE} {ADMIN_SCOPE}",
            secret_hash=None,
            jwks=None,
            jwks_uri=None,
            disabled=False,
            created=datetime.now(UTC),
        ),
    )
    state.dashboard_client_ready = True


async def user_token(request: Request, user: DashboardUser) -> str:
    """A 60-second access token for ``user``, as /v1/measures will verify it."""
    await _ensure_client(request)
    settings = request.app.state.settings
    base = (settings.public_base_url or _INNER_ORIGIN).rstrip("/")
    scope = MEASURES_SCOPE + (f" {ADMIN_SCOPE}" if user.is_admin else "")
    ring = await (await get_authenticator(request)).ring()
    issued = issue_access_token(
        client_id=DASHBOARD_CLIENT_ID,
        organization=None if user.is_admin else user.organization,
        scopes=ScopeSet.parse(scope),
        ring=ring,
        issuer=f"{base}/auth",
        audience=f"{base}/fhir",
        now=datetime.now(UTC),
        lifetime_seconds=TOKEN_SECONDS,
    )
    return issued.access_token


async def fetch(
    request: Request,
    user: DashboardUser,
    params: Sequence[tuple[str, str]],
    *,
    csv: bool = False,
) -> httpx.Response:
    """GET /v1/measures with ``params`` for ``user``; a refusal raises MeasuresError."""
    token = await user_token(request, user)
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "text/csv" if csv else "application/json",
    }
    request_id = getattr(request.state, "request_id", None)
    if isinstance(request_id, str):
        headers["X-Request-Id"] = request_id
    query: list[tuple[str, str | int | float | bool | None]] = [
        *params,
        ("format", "csv" if csv else "json"),
    ]
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url=_INNER_ORIGIN) as client:
        response = await client.get("/v1/measures", params=query, headers=headers)
    if response.status_code != 200:
        raise _error(response)
    return response


async def fetch_json(
    request: Request, user: DashboardUser, params: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    answer = orjson.loads((await fetch(request, user, params)).content)
    if not isinstance(answer, dict) or not isinstance(answer.get("measures"), list):
        raise MeasuresError(502, "GET /v1/measures gave an answer the dashboard cannot read.")
    return answer


def _error(response: httpx.Response) -> MeasuresError:
    diagnostics = _diagnostics(response)
    status = response.status_code
    if status in (400, 422):
        return MeasuresError(status, diagnostics or "The filters were not accepted.")
    if status in (401, 403):
        return MeasuresError(
            503,
            "The dashboard may not read measures at the moment"
            + (f" ({diagnostics})" if diagnostics else "")
            + f". An administrator can check the client '{DASHBOARD_CLIENT_ID}' "
            f"(`handoff clients list`; `handoff clients enable {DASHBOARD_CLIENT_ID}`).",
        )
    if status in (404, 405):
        return MeasuresError(503, "This server does not offer GET /v1/measures.")
    if status == 429:
        return MeasuresError(503, "Too many dashboard requests at once; reload in a moment.")
    return MeasuresError(502, "The measures could not be computed; try again in a moment.")


def _diagnostics(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    issues = body.get("issue") if isinstance(body, dict) else None
    if isinstance(issues, list) and issues and isinstance(issues[0], dict):
        text = issues[0].get("diagnostics")
        return text[:500] if isinstance(text, str) else None
    return None
