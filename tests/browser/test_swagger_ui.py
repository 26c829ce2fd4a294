"""/docs in a real browser against a real `handoff serve --demo`: no CDN, and the Authorize
button's client-credentials flow gets a token that Try-it-out then uses.

The page is opened under a host name that is not localhost (mapped to 127.0.0.1 inside
Chromium), because Swagger UI behaves differently for localhost: there it skips its online
validator badge, which elsewhere is an image fetched from validator.swagger.io.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.cli.test_serve import free_port, start, wait_ready

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
HOST = "handoff.test"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
]
TIMEOUT_MS = 60_000  # the OpenAPI document is large (every FHIR schema): give it time


def require_browser() -> None:
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run under CI: {missing}")
        pytest.skip(missing)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    require_browser()
    port = free_port()
    env = {"HANDOFF_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}"}
    proc = start(["serve", "--demo", "--port", str(port)], env, tmp_path)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield f"http://{HOST}:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_swagger_ui_authorizes_and_tries_a_search(server: str) -> None:
    from playwright.sync_api import Request, Route, expect, sync_playwright

    base = server
    ours = urlsplit(base).netloc
    loaded: list[tuple[str, str]] = []  # (resource type, url) of everything the page asked for
    foreign: list[str] = []
    token_statuses: list[int] = []

    def only_ours(route: Route, request: Request) -> None:
        loaded.append((request.resource_type, request.url))
        if urlsplit(request.url).netloc != ours:
            foreign.append(request.url)
            route.abort()
        else:
            route.continue_()

    expect.set_options(timeout=TIMEOUT_MS)
    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.route("**/*", only_ours)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on(
                "response",
                lambda r: (
                    token_statuses.append(r.status) if r.url.endswith("/auth/token") else None
                ),
            )
            page.goto(f"{base}/docs", wait_until="networkidle")
            page.locator(".swagger-ui .info .title").wait_for()
            # The watch itself works: a request to a CDN is seen (and refused).
            cdn = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
            page.evaluate("url => fetch(url).catch(() => null)", cdn)
            assert foreign == [cdn]
            foreign.clear()
            assert "Handoff" in page.locator(".swagger-ui .info .title").inner_text(), console

            # Authorize: SMART client credentials with the demo administrator's secret.
            page.get_by_role("button", name="Authorize").first.click()
            dialog = page.locator(".modal-ux")
            dialog.locator("input[data-name=clientId]").fill("demo-admin")
            dialog.locator("input[data-name=clientSecret]").fill("demo-admin-secret")
            dialog.locator(".auth-btn-wrapper button.authorize").click()
            expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
            dialog.locator(".auth-btn-wrapper button.btn-done").click()
            expect(dialog).to_have_count(0)

            # GET /fhir/Task: expand, Try it out, Execute.
            operation = page.locator("#operations-FHIR_Task-search_Task")
            operation.locator(".opblock-summary").click()
            operation.get_by_role("button", name="Try it out").click()
            operation.get_by_role("button", name="Execute").click()
            status = operation.locator(".live-responses-table .response .response-col_status")
            expect(status.first).to_have_text("200")
            body = operation.locator(".live-responses-table .response-col_description pre")
            expect(body.first).to_contain_text('"searchset"')

            # POST /fhir/Task opens too (its R4 body once froze the page for minutes), with
            # an example body to start from.
            create = page.locator("#operations-FHIR_Task-create_Task")
            create.locator(".opblock-summary").click()
            create.get_by_role("button", name="Try it out").click()
            expect(create.locator("textarea.body-param__text")).to_contain_text('"Task"')
        finally:
            browser.close()

    assert token_statuses == [200]
    assert foreign == [], f"the docs page reached other hosts: {foreign}"
    assets = {url for kind, url in loaded if kind in ("script", "stylesheet")}
    assert {f"{base}/static-offline-docs/swagger-ui-bundle.js"} <= assets
    assert {f"{base}/static-offline-docs/swagger-ui.css"} <= assets
