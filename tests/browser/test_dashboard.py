"""/dashboard in Chromium: sign in (demo and OpenID Connect against a provider the test starts),
the page shows the numbers GET /v1/measures gives the same organization, the CSV download is the
/v1/measures CSV, the monthly report renders for print, and nothing is fetched from elsewhere
and nothing is logged to the console as an error.

The server runs in this process (uvicorn in a thread) so that, until GET /v1/measures is on this
branch, the test's stand-in serves it (tests/dashboard_support.py). Screenshots (and the report
as PDF) are saved under test-artifacts/dashboard/ at the repository root.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr

from service.app import create_app
from service.dashboard import views
from service.settings import Settings
from service.storage.migrate import upgrade
from tests.browser.test_swagger_ui import CHROMIUM, require_browser
from tests.dashboard_support import (
    OidcProvider,
    running_provider,
    serve_in_thread,
)

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "dashboard"
OTP = "Organization/demo-otp"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with running_provider() as p:
        yield p


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, provider: OidcProvider) -> Iterator[str]:
    require_browser()
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('dashboard') / 'dashboard.db'}"
    upgrade(url)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url,
        demo=True,
        # Three months of the demo's history: last month's figures are real, and the server
        # starts in seconds rather than the minute a year's history takes.
        demo_history_months=3,
        subscription_worker=False,
        gc_gen0_threshold=0,
        oidc_issuer=provider.issuer,
        oidc_client_id=provider.client_id,
        oidc_client_secret=SecretStr(provider.client_secret),
    )
    app = create_app(settings)
    with serve_in_thread(app) as base:
        yield base


def v1_measures(base: str, params: list[tuple[str, str]], *, csv_format: bool = False) -> Any:
    """GET /v1/measures as the demo treatment program's own client."""
    token = httpx.post(
        f"{base}/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "demo-otp",
            "client_secret": "demo-otp-secret",
            "scope": "system/MeasureReport.rs",
        },
    )
    assert token.status_code == 200, token.text
    r = httpx.get(
        f"{base}/v1/measures",
        params=[*params, ("format", "csv" if csv_format else "json")],
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
    )
    assert r.status_code == 200, r.text
    return r.text if csv_format else r.json()


class Watch:
    """What a page asked for and logged."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.foreign: list[str] = []
        self.errors: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("console", self.console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("request", self.request)
        page.on(
            "response",
            lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )

    def console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def request(self, request: Any) -> None:
        netloc = urlsplit(request.url).netloc
        if request.url.startswith("http") and netloc not in self.allowed:
            self.foreign.append(request.url)


def cascade_cells(page: Any) -> dict[str, str]:
    rows = page.locator("#cascade-table tbody tr")
    cells = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        cells[row.get_attribute("data-step")] = row.locator("td").inner_text().split()[0]
    return cells


def test_demo_program_manager_reads_downloads_and_prints(server: str, provider: Any) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    watch = Watch({urlsplit(server).netloc})
    start, end = views.last_full_month(date.today())
    params = [("from", start.isoformat()), ("to", end.isoformat())]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                accept_downloads=True, viewport={"width": 1280, "height": 900}
            )
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            watch.attach(page)

            page.goto(f"{server}/dashboard")
            expect(page).to_have_url(f"{server}/dashboard/sign-in?next=%2Fdashboard")
            page.screenshot(path=str(ARTIFACTS / "sign-in.png"), full_page=True)
            # Keyboard: the first Tab reaches the skip link; the demo form works from the keys.
            page.keyboard.press("Tab")
            expect(page.locator(".skip-link")).to_be_focused()
            page.get_by_label("Program manager of").select_option(OTP)
            page.locator("#demo-program-manager").focus()
            page.keyboard.press("Enter")
            expect(page).to_have_url(f"{server}/dashboard")
            page.locator("#cascade-chart .main-svg").first.wait_for()
            page.locator("#trends-chart .main-svg").first.wait_for()
            expect(page.locator("header")).to_contain_text("Harbor Opioid Treatment Program")

            # The page shows what /v1/measures gives the same organization.
            answer = v1_measures(server, [*params, ("stratify", "facility,intercept")])
            assert cascade_cells(page) == {
                s["step"]: views.shown(s["count"]) for s in answer["cascade"]
            }
            for m in answer["measures"]:
                total = page.locator(f'[id="measure-{m["id"]}"] tr.total td').first
                expected = (
                    views.hours(m["median_hours"])
                    if m["scoring"] == "median"
                    else views.shown(m["numerator"])
                )
                expect(total).to_have_text(expected)
            if answer["suppression"]["applied"]:
                expect(page.locator(".note")).to_contain_text("shown as <11")
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # The CSV download is the /v1/measures CSV.
            with page.expect_download() as download_info:
                page.locator("#csv-all").click()
            download = download_info.value
            assert download.suggested_filename.endswith(".csv")
            got = Path(download.path()).read_bytes().decode("utf-8")  # CSV lines end in CRLF
            assert got == v1_measures(server, params, csv_format=True)
            assert next(csv.reader(io.StringIO(got)))[0] == "measure"

            # The monthly report renders, for the screen and for print.
            page.locator("#report-link").click()
            expect(page.locator("h1")).to_contain_text("monthly report")
            page.locator("#cascade-chart .main-svg").first.wait_for()
            report = v1_measures(server, params)
            assert cascade_cells(page) == {
                s["step"]: views.shown(s["count"]) for s in report["cascade"]
            }
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
            page.emulate_media(media="print")
            expect(page.locator("#print-button")).to_be_hidden()
            expect(page.locator("nav")).to_be_hidden()
            expect(page.locator("#cascade-table")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "report-print.png"), full_page=True)
            page.pdf(path=str(ARTIFACTS / "report.pdf"))
            page.emulate_media(media="screen")

            page.get_by_role("button", name="Sign out").click()
            expect(page).to_have_url(f"{server}/dashboard/sign-in")
            page.goto(f"{server}/dashboard")
            expect(page).to_have_url(f"{server}/dashboard/sign-in?next=%2Fdashboard")
        finally:
            browser.close()
    assert watch.foreign == [], watch.foreign
    assert watch.errors == [], watch.errors


def test_oidc_sign_in(server: str, provider: OidcProvider) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    provider.user = {
        "sub": "alice",
        "name": "Alice Example",
        "handoff_organization": "demo-otp",
        "handoff_role": "program-manager",
    }
    watch = Watch({urlsplit(server).netloc, urlsplit(provider.issuer).netloc})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            watch.attach(page)
            page.goto(f"{server}/dashboard")
            page.get_by_role("link", name="Sign in with your organization").click()
            expect(page).to_have_url(f"{server}/dashboard")
            expect(page.locator("header")).to_contain_text("Alice Example")
            expect(page.locator("header")).to_contain_text(OTP)
            page.locator("#cascade-chart .main-svg").first.wait_for()
            start, end = views.last_full_month(date.today())
            answer = v1_measures(
                server,
                [
                    ("from", start.isoformat()),
                    ("to", end.isoformat()),
                    ("stratify", "facility,intercept"),
                ],
            )
            assert cascade_cells(page) == {
                s["step"]: views.shown(s["count"]) for s in answer["cascade"]
            }
            page.screenshot(path=str(ARTIFACTS / "dashboard-oidc.png"), full_page=True)
        finally:
            browser.close()
    assert provider.token_requests and provider.token_requests[-1].get("code_verifier")
    assert watch.foreign == [], watch.foreign
    assert watch.errors == [], watch.errors
