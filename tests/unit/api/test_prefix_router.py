"""Per-type routers decline foreign paths early, and still route everything they own."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.routing import Match

from service.api.routes.resources import PrefixRouter, resource_router
from service.app import create_app
from service.settings import Settings


def scope(path: str, method: str = "GET", root_path: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "path": root_path + path,
        "root_path": root_path,
        "method": method,
        "headers": [],
        "query_string": b"",
    }


def test_resource_routers_are_prefix_routers() -> None:
    router = resource_router("Task", tags=["FHIR Task"])
    assert isinstance(router, PrefixRouter)
    assert router.prefix == "/fhir/Task"


@pytest.mark.parametrize(
    "path",
    ["/fhir/Patient/1", "/fhir/TaskX", "/fhir/Tasks/1", "/fhir", "/healthz", "/fhir/task/1"],
)
def test_paths_outside_the_prefix_do_not_match(path: str) -> None:
    router = resource_router("Task", tags=["FHIR Task"])
    assert router.matches(scope(path)) == (Match.NONE, {})


def app_client(root_path: str = "") -> httpx.AsyncClient:
    app = create_app(Settings(database_url="sqlite+aiosqlite://", _env_file=None))  # type: ignore[call-arg]
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/fhir/Task", "GET"),
        ("/fhir/Task", "POST"),
        ("/fhir/Task/_search", "POST"),
        ("/fhir/Task/_history", "GET"),
        ("/fhir/Task/abc", "GET"),
        ("/fhir/Task/abc", "PUT"),
        ("/fhir/Task/abc/_history/2", "GET"),
    ],
)
async def test_paths_inside_the_prefix_are_routed(path: str, method: str) -> None:
    async with app_client() as http:
        r = await http.request(method, path)
    # Routed to the FHIR endpoint, which asks for a token (an unrouted path would be a 404).
    assert r.status_code == 401, (path, method, r.status_code, r.text)


async def test_root_path_is_honoured() -> None:
    async with app_client(root_path="/handoff") as http:
        assert (await http.get("/handoff/fhir/Task/abc")).status_code == 401
        assert (await http.get("/handoff/fhir/Nope/abc")).status_code == 404
