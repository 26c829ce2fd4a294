"""The dashboard (/dashboard): sign-in (demo and OpenID Connect), who sees what, and that its
pages and CSV show exactly what GET /v1/measures answers the signed-in person's organization.

Until GET /v1/measures is on this branch, a stand-in serves it (tests/dashboard_support.py);
with the real route present the same tests run against it.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Iterator
from datetime import date
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.dashboard import views
from service.dashboard.measures import DASHBOARD_CLIENT_ID
from service.settings import Settings
from service.storage.clients import set_disabled
from service.storage.db import write_transaction
from tests.conftest import BASE, TokenFactory
from tests.dashboard_support import OidcProvider, running_provider

OTP = "Organization/demo-otp"
JAIL = "Organization/demo-county-jail"


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with running_provider() as p:
        yield p


def _app(settings: Settings, engine: AsyncEngine, **changes: Any) -> Any:
    app = create_app(settings.model_copy(update=changes), engine=engine)
    return app


@pytest.fixture
async def demo_app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Any]:
    app = _app(settings, engine, demo=True)
    yield app
    if app.state.auth is not None:
        await app.state.auth.close()


def browser(app: Any, base: str = BASE) -> httpx.AsyncClient:
    """A person's browser: keeps cookies, does not follow redirects by itself."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


async def demo_sign_in(b: httpx.AsyncClient, role: str, organization: str = "") -> httpx.Response:
    page = await b.get("/dashboard/sign-in")
    assert page.status_code == 200
    return await b.post(
        "/dashboard/sign-in/demo",
        data={"csrf": csrf_of(page.text), "role": role, "organization": organization},
    )


async def measures(
    app: Any, issue_token: TokenFactory, organization: str | None, params: list[tuple[str, str]]
) -> httpx.Response:
    """What GET /v1/measures answers a client of ``organization`` (None: an administrator)."""
    scopes = "system/MeasureReport.rs" + ("" if organization else " handoff/admin")
    token = await issue_token(organization=organization, scopes=scopes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        r = await c.get("/v1/measures", params=params, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r


def default_params(**extra: str) -> list[tuple[str, str]]:
    start, end = views.last_full_month(date.today())
    params = [("from", start.isoformat()), ("to", end.isoformat())]
    return params + list(extra.items())


def cascade_on(page: str) -> dict[str, str]:
    rows = re.findall(
        r'<tr data-step="([^"]+)"><th scope="row">[^<]*</th><td class="num">([^<]*)', page
    )
    return {step: html.unescape(value).strip() for step, value in rows}


def totals_on(page: str) -> dict[str, list[str]]:
    """Measure id -> the cells of its total row."""
    found = {}
    for mid, body in re.findall(
        r'<table class="numbers measure" id="measure-([^"]+)".*?<tr class="total">(.*?)</tr>',
        page,
        flags=re.S,
    ):
        found[mid] = [html.unescape(c).strip() for c in re.findall(r"<td[^>]*>([^<]*)", body)]
    return found


def expected_totals(answer: dict[str, Any]) -> dict[str, list[str]]:
    expected = {}
    for m in answer["measures"]:
        if m["scoring"] == "median":
            expected[m["id"]] = [views.hours(m["median_hours"])]
        elif m["scoring"] == "count":
            expected[m["id"]] = [views.shown(m["numerator"])]
        else:
            expected[m["id"]] = [
                views.shown(m["numerator"]),
                views.shown(m["denominator"]),
                views.percent(m["rate"]),
            ]
    return expected


def assert_page_shows(page: str, answer: dict[str, Any]) -> None:
    assert cascade_on(page) == {s["step"]: views.shown(s["count"]) for s in answer["cascade"]}
    assert totals_on(page) == expected_totals(answer)


# --- not signed in ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/dashboard", "/dashboard/report?month=2026-10", "/dashboard/measures.csv"]
)
async def test_not_signed_in_is_sent_to_sign_in(demo_app: Any, path: str) -> None:
    async with browser(demo_app) as b:
        r = await b.get(path)
    assert r.status_code == 303
    target = urlsplit(r.headers["location"])
    assert target.path == "/dashboard/sign-in"
    assert parse_qs(target.query)["next"] == [path]


async def test_sign_in_page_offers_the_labelled_demo_sign_in(demo_app: Any) -> None:
    async with browser(demo_app) as b:
        r = await b.get("/dashboard/sign-in")
    assert r.status_code == 200
    assert "Demo sign-in (no password)" in r.text
    assert "Harbor Opioid Treatment Program" in r.text
    assert "Sign in as demo administrator" in r.text
    assert "DEMO server" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]


# --- demo sign-in ----------------------------------------------------------------------------


async def test_demo_program_manager_sees_its_organizations_measures(
    demo_app: Any, issue_token: TokenFactory
) -> None:
    async with browser(demo_app) as b:
        r = await demo_sign_in(b, "program-manager", OTP)
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/dashboard" in cookie
        assert "secure" not in cookie  # plain http here
        page = await b.get("/dashboard")
    assert page.status_code == 200, page.text
    assert "Harbor Opioid Treatment Program" in page.text
    answer = (
        await measures(demo_app, issue_token, OTP, default_params(stratify="facility,intercept"))
    ).json()
    assert answer["organization"] == OTP
    assert_page_shows(page.text, answer)
    # Small cells are shown as such, with the explanation.
    assert answer["suppression"]["applied"] is True
    assert "Small numbers are hidden" in page.text
    if "<11" in str(answer):
        assert "&lt;11" in page.text
    # The chart draws what the table says, from the same numbers.
    assert 'id="chart-data"' in page.text and 'src="/dashboard/static/plotly.min.js?v=' in page.text


async def test_another_organizations_figures_are_not_shown(
    demo_app: Any, issue_token: TokenFactory
) -> None:
    params = default_params(stratify="facility,intercept")
    ours = (await measures(demo_app, issue_token, OTP, params)).json()
    theirs = (await measures(demo_app, issue_token, JAIL, params)).json()
    async with browser(demo_app) as otp, browser(demo_app) as jail:
        await demo_sign_in(otp, "program-manager", OTP)
        await demo_sign_in(jail, "program-manager", JAIL)
        otp_page = (await otp.get("/dashboard")).text
        jail_page = (await jail.get("/dashboard")).text
    assert_page_shows(otp_page, ours)
    assert_page_shows(jail_page, theirs)
    if ours["cascade"] != theirs["cascade"]:
        assert cascade_on(otp_page) != cascade_on(jail_page)
    assert "Riverbend County Jail" not in otp_page.split("<main")[0]


async def test_demo_administrator_sees_all_organizations(
    demo_app: Any, issue_token: TokenFactory
) -> None:
    async with browser(demo_app) as b:
        r = await demo_sign_in(b, "admin")
        assert r.status_code == 303
        page = await b.get("/dashboard")
    assert page.status_code == 200
    assert "All organizations" in page.text
    answer = (
        await measures(demo_app, issue_token, None, default_params(stratify="facility,intercept"))
    ).json()
    assert answer["scope"] == "all"
    assert_page_shows(page.text, answer)


async def test_filters_reach_the_measures(demo_app: Any, issue_token: TokenFactory) -> None:
    query = {
        "from": "2026-01-01",
        "to": "2026-03-31",
        "intercept": "4",
        "facility": "Location/demo-county-jail-site",
    }
    async with browser(demo_app) as b:
        await demo_sign_in(b, "program-manager", OTP)
        page = await b.get("/dashboard", params=query)
    assert page.status_code == 200
    answer = (
        await measures(
            demo_app, issue_token, OTP, [*query.items(), ("stratify", "facility,intercept")]
        )
    ).json()
    assert_page_shows(page.text, answer)
    assert 'value="2026-01-01"' in page.text and '<option value="4" selected>' in page.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"from": "2026-13-01"}, "must be a date"),
        ({"from": "2026-03-01", "to": "2026-02-01"}, "must not be before"),
        ({"intercept": "9"}, "intercept must be a number from 0 to 5"),
        ({"facility": "Organization/x"}, "Location reference"),
    ],
)
async def test_unusable_filters_are_refused_with_what_to_send(
    demo_app: Any, query: dict[str, str], message: str
) -> None:
    async with browser(demo_app) as b:
        await demo_sign_in(b, "program-manager", OTP)
        r = await b.get("/dashboard", params=query)
    assert r.status_code == 400
    assert message in html.unescape(r.text)


async def test_demo_sign_in_with_a_stale_form_is_refused(demo_app: Any) -> None:
    async with browser(demo_app) as b:
        await b.get("/dashboard/sign-in")
        r = await b.post(
            "/dashboard/sign-in/demo",
            data={"csrf": "forged", "role": "admin"},
        )
        assert r.status_code == 400
        assert (await b.get("/dashboard")).status_code == 303  # still not signed in


@pytest.mark.parametrize(
    ("role", "organization"),
    [("program-manager", "Organization/not-a-demo-org"), ("superuser", "")],
)
async def test_demo_sign_in_refuses_unknown_choices(
    demo_app: Any, role: str, organization: str
) -> None:
    async with browser(demo_app) as b:
        r = await demo_sign_in(b, role, organization)
        assert r.status_code == 400
        assert (await b.get("/dashboard")).status_code == 303


async def test_no_demo_sign_in_without_demo(settings: Settings, engine: AsyncEngine) -> None:
    app = _app(settings, engine, demo=False)
    async with browser(app) as b:
        page = await b.get("/dashboard/sign-in")
        assert "Demo sign-in" not in page.text
        assert "No sign-in is configured" in page.text
        r = await b.post("/dashboard/sign-in/demo", data={"csrf": "any", "role": "admin"})
    assert r.status_code == 404


async def test_sign_out(demo_app: Any) -> None:
    async with browser(demo_app) as b:
        await demo_sign_in(b, "admin")
        page = await b.get("/dashboard")
        assert (await b.post("/dashboard/sign-out", data={"csrf": "forged"})).status_code == 400
        assert (await b.get("/dashboard")).status_code == 200
        r = await b.post("/dashboard/sign-out", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/sign-in"
        assert (await b.get("/dashboard")).status_code == 303


async def test_cookie_is_secure_over_https(demo_app: Any) -> None:
    async with browser(demo_app, base="https://testserver") as b:
        r = await demo_sign_in(b, "admin")
    assert "secure" in r.headers["set-cookie"].lower()


async def test_next_never_leaves_the_dashboard(demo_app: Any) -> None:
    async with browser(demo_app) as b:
        page = await b.get("/dashboard/sign-in", params={"next": "https://evil.example/"})
        r = await b.post(
            "/dashboard/sign-in/demo",
            data={"csrf": csrf_of(page.text), "role": "admin", "next": "//evil.example/x"},
        )
    assert r.headers["location"] == "/dashboard"


# --- CSV and the printable report ------------------------------------------------------------


@pytest.mark.parametrize("one_measure", [False, True])
async def test_csv_download_is_the_measures_csv(
    demo_app: Any, issue_token: TokenFactory, one_measure: bool
) -> None:
    params = default_params()
    if one_measure:  # the CSV link of one measure's table
        first = (await measures(demo_app, issue_token, OTP, params)).json()["measures"][0]
        params.append(("measure", first["id"]))
    async with browser(demo_app) as b:
        await demo_sign_in(b, "program-manager", OTP)
        r = await b.get("/dashboard/measures.csv", params=params)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.text.splitlines()[0] == (
        "measure,title,stratifier,value,display,numerator,denominator,rate,median_hours"
    )
    expected = await measures(demo_app, issue_token, OTP, [*params, ("format", "csv")])
    assert r.text == expected.text


async def test_monthly_report(demo_app: Any, issue_token: TokenFactory) -> None:
    async with browser(demo_app) as b:
        await demo_sign_in(b, "program-manager", OTP)
        r = await b.get("/dashboard/report", params={"month": "2026-02"})
        css = await b.get("/dashboard/static/dashboard.css")
        bad = await b.get("/dashboard/report", params={"month": "2026-2"})
    assert r.status_code == 200
    assert "monthly report, February 2026" in r.text
    answer = (
        await measures(demo_app, issue_token, OTP, [("from", "2026-02-01"), ("to", "2026-02-28")])
    ).json()
    assert_page_shows(r.text, answer)
    assert 'id="print-button"' in r.text
    assert "@media print" in css.text
    assert bad.status_code == 400 and "YYYY-MM" in bad.text


# --- assets ----------------------------------------------------------------------------------


async def test_assets_are_served_here_with_a_long_cache(demo_app: Any) -> None:
    async with browser(demo_app) as b:
        plotly = await b.get("/dashboard/static/plotly.min.js")
        plain = await b.get(
            "/dashboard/static/dashboard.js", headers={"Accept-Encoding": "identity"}
        )
        missing = await b.get("/dashboard/static/../../settings.py")
        unknown = await b.get("/dashboard/static/other.js")
    assert plotly.status_code == 200
    assert plotly.headers["content-type"].startswith("text/javascript")
    assert "immutable" in plotly.headers["cache-control"]
    assert plotly.headers["content-encoding"] == "gzip"
    assert b"plotly.js" in plotly.content[:200]
    assert "content-encoding" not in plain.headers and b"Plotly.newPlot" in plain.content
    assert missing.status_code == 404 and unknown.status_code == 404


# --- when /v1/measures refuses ---------------------------------------------------------------


async def test_a_disabled_dashboard_client_is_explained(demo_app: Any, engine: AsyncEngine) -> None:
    async with browser(demo_app) as b:
        await demo_sign_in(b, "admin")
        assert (await b.get("/dashboard")).status_code == 200
        async with write_transaction(engine) as conn:
            await set_disabled(conn, DASHBOARD_CLIENT_ID, True)
        r = await b.get("/dashboard")
    assert r.status_code == 503
    assert f"handoff clients enable {DASHBOARD_CLIENT_ID}" in r.text


# --- OpenID Connect --------------------------------------------------------------------------


@pytest.fixture
async def oidc_app(
    settings: Settings, engine: AsyncEngine, provider: OidcProvider
) -> AsyncIterator[Any]:
    app = _app(
        settings,
        engine,
        oidc_issuer=provider.issuer,
        oidc_client_id=provider.client_id,
        oidc_client_secret=SecretStr(provider.client_secret),
    )
    yield app
    if app.state.auth is not None:
        await app.state.auth.close()


async def start_oidc(b: httpx.AsyncClient, next_path: str = "/dashboard") -> str:
    """Follow the sign-in to the provider, which consents at once; the callback URL."""
    r = await b.get("/dashboard/sign-in/oidc", params={"next": next_path})
    assert r.status_code == 302, r.text
    authorize = r.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["nonce"] and query["state"]
    assert query["redirect_uri"] == [f"{BASE}/dashboard/auth/callback"]
    async with httpx.AsyncClient() as outside:
        consent = await outside.get(authorize)
    assert consent.status_code == 302, consent.text
    callback = consent.headers["location"]
    assert callback.startswith(f"{BASE}/dashboard/auth/callback?")
    return callback.removeprefix(BASE)


async def test_oidc_sign_in_as_program_manager(
    oidc_app: Any, provider: OidcProvider, issue_token: TokenFactory
) -> None:
    provider.user = {
        "sub": "alice",
        "name": "Alice Example",
        "handoff_organization": "demo-otp",
        "handoff_role": "program-manager",
    }
    async with browser(oidc_app) as b:
        sign_in = await b.get("/dashboard/sign-in")
        assert 'id="oidc-sign-in"' in sign_in.text and "Demo sign-in" not in sign_in.text
        callback = await start_oidc(b, "/dashboard/report?month=2026-02")
        r = await b.get(callback)
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/dashboard/report?month=2026-02"
        page = await b.get("/dashboard")
    assert page.status_code == 200
    assert "Alice Example" in page.text and OTP in page.text
    # PKCE: the token request carried the verifier the provider checked against the challenge.
    assert provider.token_requests[-1]["code_verifier"]
    answer = (
        await measures(oidc_app, issue_token, OTP, default_params(stratify="facility,intercept"))
    ).json()
    assert_page_shows(page.text, answer)


async def test_oidc_administrator(oidc_app: Any, provider: OidcProvider) -> None:
    provider.user = {"sub": "root", "name": "Ada Admin", "handoff_role": "admin"}
    async with browser(oidc_app) as b:
        assert (await b.get(await start_oidc(b))).status_code == 303
        page = await b.get("/dashboard")
    assert page.status_code == 200 and "All organizations" in page.text


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": "bob"}, "'handoff_role'"),
        ({"sub": "bob", "handoff_role": "program-manager"}, "'handoff_organization'"),
        ({"sub": "bob", "handoff_role": "janitor", "handoff_organization": "x"}, "'handoff_role'"),
    ],
)
async def test_oidc_identity_without_a_dashboard_role_is_refused(
    oidc_app: Any, provider: OidcProvider, claims: dict[str, str], message: str
) -> None:
    provider.user = claims
    async with browser(oidc_app) as b:
        r = await b.get(await start_oidc(b))
        assert r.status_code == 403
        assert message in html.unescape(r.text)
        assert (await b.get("/dashboard")).status_code == 303


async def test_oidc_state_mismatch_is_refused(oidc_app: Any, provider: OidcProvider) -> None:
    provider.user = {"sub": "alice", "handoff_role": "admin"}
    async with browser(oidc_app) as b:
        callback = await start_oidc(b)
        forged = re.sub(r"state=[^&]+", "state=forged", callback)
        r = await b.get(forged)
        assert r.status_code == 400
        assert "Sign-in not completed" in r.text
        assert (await b.get("/dashboard")).status_code == 303
    # A callback that reaches another browser (no sign-in started there) is refused too.
    async with browser(oidc_app) as other:
        r = await other.get(callback)
        assert r.status_code == 400
        assert (await other.get("/dashboard")).status_code == 303


async def test_oidc_not_configured(demo_app: Any) -> None:
    async with browser(demo_app) as b:
        r = await b.get("/dashboard/sign-in/oidc")
    assert r.status_code == 404 and "HANDOFF_OIDC_ISSUER" in r.text
