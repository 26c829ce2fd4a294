"""Reads, searches and histories are called without FastAPI's per-request dependency
solving (``deps._direct_handler``); every other route keeps FastAPI's handler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi.routing import APIRoute

from service.api.deps import AuditedRoute, _direct_handler
from service.app import create_app
from service.settings import Settings


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI's included routers
            yield from _routes(route.original_router.routes)
        elif hasattr(route, "routes"):
            yield from _routes(route.routes)


def _direct() -> dict[tuple[str, str], bool]:
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    return {
        (method, route.path): _direct_handler(route) is not None
        for route in _routes(app.router.routes)
        if isinstance(route, AuditedRoute)
        for method in route.methods
    }


def test_reads_searches_and_histories_are_direct() -> None:
    direct = _direct()
    for key in (
        ("GET", "/fhir/Task/{resource_id}"),
        ("GET", "/fhir/Task/{resource_id}/_history/{version_id}"),
        ("GET", "/fhir/Task"),
        ("POST", "/fhir/Task/_search"),
        ("GET", "/fhir/Task/_history"),
        ("GET", "/fhir/Patient/{resource_id}"),
    ):
        assert direct[key], key


def test_routes_with_bodies_headers_or_models_are_not() -> None:
    direct = _direct()
    for key in (
        ("POST", "/fhir/Task"),  # headers (If-None-Exist, Prefer, Idempotency-Key)
        ("PUT", "/fhir/Task/{resource_id}"),
        ("POST", "/v1/referrals"),  # a JSON model
        ("GET", "/v1/referrals/{referral_id}"),  # answers a dict FastAPI serializes
    ):
        assert key in direct and not direct[key], key


def test_only_marked_endpoints_are_direct_and_a_wrongly_marked_one_fails_at_build() -> None:
    import pytest
    from fastapi import APIRouter
    from starlette.responses import Response

    from service.api.deps import ContextDep, direct

    router = APIRouter(route_class=AuditedRoute)

    @router.get("/unmarked/{x}")
    async def unmarked(x: str, ctx: ContextDep) -> Response:
        return Response()

    [route] = router.routes
    assert isinstance(route, APIRoute) and _direct_handler(route) is None

    # Marked but taking an int path parameter: the route cannot even be built.
    with pytest.raises(TypeError, match="marked @direct"):

        @router.get("/marked/{x}")
        @direct
        async def marked(x: int, ctx: ContextDep) -> Response:
            return Response()
