"""The dashboard's signed session cookie, only under /dashboard.

Starlette's SessionMiddleware (itsdangerous-signed, HttpOnly, SameSite=Lax), applied to the
dashboard's paths only: the API never reads or sets the cookie. The cookie is ``Secure`` when
the request came over https (directly or through a trusted proxy) or the public base URL is
https. The key is HANDOFF_DASHBOARD_SESSION_SECRET, or a random one per process.
"""

from __future__ import annotations

import logging
import secrets

from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.settings import Settings

PREFIX = "/dashboard"
COOKIE = "handoff_dashboard"
logger = logging.getLogger("handoff.dashboard")


def session_secret(settings: Settings) -> str:
    if settings.dashboard_session_secret is not None:
        return settings.dashboard_session_secret.get_secret_value()
    if settings.oidc_issuer:
        logger.warning(
            "HANDOFF_DASHBOARD_SESSION_SECRET is unset: dashboard sign-ins last until this "
            "process stops and work with this process only"
        )
    return secrets.token_urlsafe(32)


class DashboardSessionMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        secret = session_secret(settings)
        options = {
            "secret_key": secret,
            "session_cookie": COOKIE,
            "max_age": settings.dashboard_session_hours * 3600,
            "path": PREFIX,
            "same_site": "lax",
        }
        self.plain = SessionMiddleware(app, https_only=False, **options)  # type: ignore[arg-type]
        self.secure = SessionMiddleware(app, https_only=True, **options)  # type: ignore[arg-type]
        self.always_secure = (settings.public_base_url or "").startswith("https://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        https = self.always_secure or scope.get("scheme") == "https"
        await (self.secure if https else self.plain)(scope, receive, send)
