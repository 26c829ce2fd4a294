"""/dashboard: pages for program managers and administrators (server-rendered HTML).

Not part of the API (left out of OpenAPI). Every page needs a signed-in user; the data comes
from GET /v1/measures for that user (``measures``). Sign-in is OpenID Connect (authorization
code with PKCE, Authlib's Starlette client) with the organization's provider, or, under
``--demo``, a demo sign-in as a program manager of a demo organization or as the administrator.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from service.api.responses import public_base
from service.dashboard import assets, views
from service.dashboard.measures import MeasuresError, fetch, fetch_json
from service.dashboard.oidc_client import OAuth, OAuthError
from service.dashboard.users import (
    SESSION_USER,
    DashboardUser,
    SignInRefused,
    csrf_ok,
    csrf_token,
    expiry,
    user_from_claims,
)
from service.settings import Settings

logger = logging.getLogger("handoff.dashboard")
router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals["asset"] = assets.url
OIDC_NAME = "provider"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def install(app: FastAPI, settings: Settings) -> None:
    """Add the dashboard's routes and its OpenID client (when HANDOFF_OIDC_ISSUER is set)."""
    app.state.dashboard_oauth = oidc_client(settings)
    app.include_router(router)


def oidc_client(settings: Settings) -> OAuth | None:
    if not settings.oidc_issuer:
        return None
    if not settings.oidc_client_id:
        raise ValueError("HANDOFF_OIDC_ISSUER is set: set HANDOFF_OIDC_CLIENT_ID as well")
    oauth = OAuth()
    secret = settings.oidc_client_secret
    oauth.register(
        OIDC_NAME,
        client_id=settings.oidc_client_id,
        client_secret=secret.get_secret_value() if secret else None,
        server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": settings.oidc_scope,
            "code_challenge_method": "S256",
            **({} if secret else {"token_endpoint_auth_method": "none"}),
        },
    )
    return oauth


# --- helpers ---------------------------------------------------------------------------------


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _user(request: Request) -> DashboardUser | None:
    return DashboardUser.from_session(request.session.get(SESSION_USER), now=datetime.now(UTC))


def _page(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    context = {
        "user": _user(request),
        "csrf": csrf_token(request.session),
        "demo": _settings(request).demo,
        **context,
    }
    return templates.TemplateResponse(
        request, template, context, status_code=status, headers=SECURITY_HEADERS
    )


def _error(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return _page(request, "error.html", {"title": title, "message": message}, status)


def _to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/dashboard/sign-in?" + urlencode({"next": target}), status_code=303)


def _safe_next(value: object) -> str:
    """Only a dashboard path (never another site) to go to after signing in."""
    if (
        isinstance(value, str)
        and value.startswith("/dashboard")
        and "//" not in value
        and "\\" not in value
        and all(c.isprintable() for c in value)
    ):
        return value
    return "/dashboard"


def _sign_in(request: Request, user: DashboardUser, after: str) -> RedirectResponse:
    request.session.clear()  # nothing from before the sign-in carries over
    request.session[SESSION_USER] = user.to_session()
    csrf_token(request.session)
    logger.info(
        "dashboard sign-in: %s (%s, %s, %s)", user.subject, user.via, user.role, user.organization
    )
    return RedirectResponse(_safe_next(after), status_code=303)


def _demo_organizations(request: Request) -> list[tuple[str, str, str]]:
    """(key, Organization/<id>, name) of the demo network."""
    from service.demo import ORGANIZATIONS

    ids: dict[str, str] = getattr(request.app.state, "demo_organizations", None) or {}
    return [
        (key, f"Organization/{ids.get(key, f'demo-{key}')}", name)
        for key, (name, _type, _services) in ORGANIZATIONS.items()
    ]


def _scope_label(user: DashboardUser) -> str:
    if user.is_admin:
        return "All organizations"
    return user.organization_name or user.organization or ""


# --- sign-in ---------------------------------------------------------------------------------


@router.get("/sign-in")
async def sign_in_page(request: Request, next: str = "/dashboard") -> Response:
    return _page(
        request,
        "sign_in.html",
        {
            "title": "Sign in",
            "next": _safe_next(next),
            "oidc": request.app.state.dashboard_oauth is not None,
            "demo_organizations": _demo_organizations(request) if _settings(request).demo else [],
        },
    )


@router.post("/sign-in/demo")
async def demo_sign_in(
    request: Request,
    role: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
    organization: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/dashboard",
) -> Response:
    settings = _settings(request)
    if not settings.demo:
        return _error(
            request,
            404,
            "No demo sign-in",
            "The demo sign-in exists only under `handoff serve --demo`.",
        )
    if not csrf_ok(request.session, csrf):
        return _error(
            request, 400, "Sign-in expired", "The sign-in form was out of date: open Sign in again."
        )
    now = datetime.now(UTC)
    if role == "admin":
        user = DashboardUser(
            subject="demo:admin",
            name="Demo administrator",
            role="admin",
            organization=None,
            organization_name=None,
            via="demo",
            expires=expiry(now, settings.dashboard_session_hours),
        )
    elif role == "program-manager":
        found = next_org = None
        for _key, reference, name in _demo_organizations(request):
            if reference == organization:
                found, next_org = reference, name
        if found is None:
            return _error(
                request, 400, "Unknown organization", "Choose one of the demo organizations listed."
            )
        user = DashboardUser(
            subject=f"demo:program-manager:{found}",
            name=f"Demo program manager ({next_org})",
            role="program-manager",
            organization=found,
            organization_name=next_org,
            via="demo",
            expires=expiry(now, settings.dashboard_session_hours),
        )
    else:
        return _error(request, 400, "Unknown role", "Choose program manager or administrator.")
    return _sign_in(request, user, next)


@router.get("/sign-in/oidc")
async def oidc_sign_in(request: Request, next: str = "/dashboard") -> Response:
    oauth: OAuth | None = request.app.state.dashboard_oauth
    if oauth is None:
        return _error(
            request,
            404,
            "No identity provider",
            "This server has no OpenID Connect provider configured (HANDOFF_OIDC_ISSUER).",
        )
    request.session["after_sign_in"] = _safe_next(next)
    callback = public_base(request, _settings(request)) + "/dashboard/auth/callback"
    try:
        response: Response = await oauth.create_client(OIDC_NAME).authorize_redirect(
            request, callback
        )
    except Exception:
        logger.warning("identity provider unreachable", exc_info=True)
        return _error(
            request,
            503,
            "Identity provider unavailable",
            "The identity provider did not answer; try again in a moment.",
        )
    return response


@router.get("/auth/callback")
async def oidc_callback(request: Request) -> Response:
    oauth: OAuth | None = request.app.state.dashboard_oauth
    if oauth is None:
        return _error(request, 404, "No identity provider", "No OpenID Connect sign-in here.")
    settings = _settings(request)
    try:
        token = await oauth.create_client(OIDC_NAME).authorize_access_token(request)
    except OAuthError as exc:
        return _error(
            request,
            400,
            "Sign-in not completed",
            f"The sign-in could not be completed ({exc.error}). Open Sign in and start again.",
        )
    claims = token.get("userinfo")
    if not isinstance(claims, dict):
        return _error(request, 400, "Sign-in not completed", "The provider sent no ID token.")
    try:
        user = user_from_claims(
            claims,
            organization_claim=settings.oidc_organization_claim,
            role_claim=settings.oidc_role_claim,
            hours=settings.dashboard_session_hours,
        )
    except SignInRefused as exc:
        return _error(request, 403, "No access to the dashboard", str(exc))
    return _sign_in(request, user, request.session.get("after_sign_in", "/dashboard"))


@router.post("/sign-out")
async def sign_out(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    if not csrf_ok(request.session, csrf):
        return _error(request, 400, "Sign-out expired", "The page was out of date: reload it.")
    request.session.clear()
    return RedirectResponse("/dashboard/sign-in", status_code=303)


# --- pages -----------------------------------------------------------------------------------


def _query(request: Request) -> dict[str, str]:
    return dict(request.query_params.items())


@router.get("")
async def dashboard(request: Request) -> Response:
    user = _user(request)
    if user is None:
        return _to_sign_in(request)
    try:
        filters = views.parse_filters(_query(request), today=date.today())
    except views.FilterError as exc:
        return _error(request, 400, "Filters not accepted", str(exc))
    try:
        answer = await fetch_json(
            request, user, [*filters.params(), ("stratify", "facility,intercept")]
        )
        trend = await fetch_json(
            request,
            user,
            [
                ("from", filters.trend_start().isoformat()),
                *[p for p in filters.params() if p[0] != "from"],
                ("stratify", "month"),
            ],
        )
    except MeasuresError as exc:
        return _error(request, exc.status, "Measures unavailable", exc.message)
    names = views.facility_names(answer)
    measure_tables = views.tables(answer, names)
    facilities = views.facility_values(answer)
    if filters.facility and filters.facility not in facilities:
        facilities.append(filters.facility)
    chart = {"cascade": views.cascade(answer), "trends": views.trends(trend)}
    return _page(
        request,
        "dashboard.html",
        {
            "title": "Program measures",
            "scope_label": _scope_label(user),
            "answer": answer,
            "filters": filters,
            "params": urlencode(filters.params()),
            "facilities": facilities,
            "facility_names": names,
            "intercepts": views.INTERCEPTS,
            "cascade": chart["cascade"],
            "trends": chart["trends"],
            "trend_start": filters.trend_start(),
            "naloxone": views.naloxone(answer),
            "groups": views.groups(measure_tables),
            "chart": chart,
            "report_month": filters.end.strftime("%Y-%m"),
        },
    )


@router.get("/measures.csv")
async def measures_csv(request: Request) -> Response:
    user = _user(request)
    if user is None:
        return _to_sign_in(request)
    query = _query(request)
    try:
        filters = views.parse_filters(query, today=date.today())
    except views.FilterError as exc:
        return _error(request, 400, "Filters not accepted", str(exc))
    params = filters.params()
    measure = (query.get("measure") or "").strip()
    if measure:
        params.append(("measure", measure))
    stratify = (query.get("stratify") or "").strip()
    if stratify:
        params.append(("stratify", stratify))
    try:
        answer = await fetch(request, user, params, csv=True)
    except MeasuresError as exc:
        return _error(request, exc.status, "Measures unavailable", exc.message)
    name = f"handoff-measures-{filters.start}-{filters.end}"
    if measure and measure.replace("-", "").isalnum():
        name += f"-{measure}"
    return Response(
        answer.content,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}.csv"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/report")
async def report(request: Request, month: str | None = None) -> Response:
    user = _user(request)
    if user is None:
        return _to_sign_in(request)
    try:
        start, end = views.month_bounds(month) if month else views.last_full_month(date.today())
    except views.FilterError as exc:
        return _error(request, 400, "Month not accepted", str(exc))
    filters = views.Filters(start=start, end=end)
    try:
        answer = await fetch_json(request, user, filters.params())
    except MeasuresError as exc:
        return _error(request, exc.status, "Measures unavailable", exc.message)
    measure_tables = views.tables(answer, views.facility_names(answer))
    cascade = views.cascade(answer)
    return _page(
        request,
        "report.html",
        {
            "title": f"Monthly report {start:%B %Y}",
            "scope_label": _scope_label(user),
            "answer": answer,
            "filters": filters,
            "month": start,
            "cascade": cascade,
            "naloxone": views.naloxone(answer),
            "groups": views.groups(measure_tables),
            "chart": {"cascade": cascade, "trends": None},
            "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        },
    )


@router.get("/static/{name}")
async def static(request: Request, name: str) -> Response:
    found = assets.asset(name)
    if found is None:
        return Response("Not found", status_code=404, media_type="text/plain")
    headers = {
        "Cache-Control": assets.CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept-Encoding",
    }
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(found.gzipped, media_type=found.media_type, headers=headers)
    return Response(found.content, media_type=found.media_type, headers=headers)
