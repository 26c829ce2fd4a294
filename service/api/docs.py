"""Swagger UI at /docs, served from this process (fastapi-offline's copy of its assets).

Swagger UI reads ``/openapi-ui.json``: the published contract (``/openapi.json``) with R4
datatypes shown one level deep (``openapi_schemas.swagger_ui_view``), because Swagger UI inlines
every schema an operation uses when it is expanded and the full R4 graph froze it. The
Authorize button keeps working as before (client credentials against ``/auth/token``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse

from service.openapi_schemas import swagger_ui_view

STATIC_URL = "/static-offline-docs"  # mounted by FastAPIOffline
UI_SPEC_URL = "/openapi-ui.json"


def install(app: FastAPI) -> None:
    view: dict[str, Any] = {}

    @app.get(UI_SPEC_URL, include_in_schema=False)
    async def swagger_ui_spec() -> JSONResponse:
        if not view:
            view.update(swagger_ui_view(app.openapi()))
        return JSONResponse(view)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{UI_SPEC_URL}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
