"""Every protected route against every kind of token failure, and the public routes without one.

The route list comes from the app itself, so a route added later is covered at once: every
route under /fhir must refuse a request without a token and one without the right scope. Task
is the sampled type that goes through the whole matrix (expired, forged, wrong audience, wrong
issuer, missing scope, exactly the right scope); the other types get no-token and wrong-scope.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from service.auth.keys import SigningKey, SigningKeyRing
from service.auth.scopes import ACTIONS, ScopeSet
from service.auth.tokens import issue_access_token
from service.fhir.r4 import SUPPORTED_TYPES
from tests.builders import FHIR_JSON, task
from tests.conftest import BASE, TokenFactory

SAMPLE = "Task"
ORG = "Organization/matrix-org"
CLIENT_ID = "matrix-client"
PUBLIC_FHIR = re.compile(r"^/fhir/(metadata|\.well-known/.*)$")
# Routes outside /fhir and what they answer without a token (a new one must be added here).
PUBLIC_ROUTES: dict[tuple[str, str], int] = {
    ("GET", "/openapi.json"): 200,
    ("GET", "/openapi-ui.json"): 200,
    ("GET", "/docs"): 200,
    ("GET", "/docs/oauth2-redirect"): 200,
    ("GET", "/redoc"): 200,
    ("GET", "/healthz"): 200,
    ("GET", "/readyz"): 200,
    ("GET", "/auth/jwks"): 200,
    ("POST", "/auth/token"): 400,  # an OAuth error (no grant_type), not a bearer challenge
    ("GET", "/fhir/metadata"): 200,
    ("GET", "/fhir/.well-known/smart-configuration"): 200,
    # The dashboard's pages: a signed-in session, not a bearer token (test_dashboard).
    ("GET", "/dashboard/sign-in"): 200,
    ("GET", "/dashboard"): 303,  # to the sign-in page
    ("GET", "/dashboard/report"): 303,
    ("GET", "/dashboard/measures.csv"): 303,
    ("POST", "/dashboard/sign-in/demo"): 400,  # no form
    ("GET", "/dashboard/sign-in/oidc"): 404,  # no OpenID provider configured
    ("GET", "/dashboard/auth/callback"): 404,
    ("POST", "/dashboard/sign-out"): 400,  # no form token
    ("GET", "/dashboard/static/{name}"): 404,  # no such file
}
# SMART v2: r = read, vread, instance history; s = search, type and system history;
# u = update (and upsert) and patch.
TYPE_ACTIONS: dict[tuple[str, str], str] = {
    ("GET", ""): "s",
    ("POST", "/_search"): "s",
    ("GET", "/_history"): "s",
    ("GET", "/{resource_id}"): "r",
    ("GET", "/{resource_id}/_history"): "r",
    ("GET", "/{resource_id}/_history/{version_id}"): "r",
    ("POST", ""): "c",
    ("PUT", "/{resource_id}"): "u",
    ("PATCH", "/{resource_id}"): "u",
    ("DELETE", "/{resource_id}"): "d",
}
# Operations of one type: Subscription's (Backport IG) status of all your subscriptions is a
# search, one subscription's status or events a read of it.
OPERATION_ACTIONS: dict[tuple[str, str, str], str] = {
    ("Subscription", "GET", "/$status"): "s",
    ("Subscription", "GET", "/{resource_id}/$status"): "r",
    ("Subscription", "GET", "/{resource_id}/$events"): "r",
    # Patient/$match searches, $merge updates.
    ("Patient", "POST", "/$match"): "s",
    ("Patient", "POST", "/$merge"): "u",
    # The program measures' reports (features.measures) need MeasureReport.r.
    ("Measure", "GET", "/$evaluate-measure"): "r",
    ("Measure", "POST", "/$evaluate-measure"): "r",
    ("Measure", "GET", "/{resource_id}/$evaluate-measure"): "r",
    ("Measure", "POST", "/{resource_id}/$evaluate-measure"): "r",
}
# System routes: the type whose scope the sample request needs ("*": any type) and the action.
SYSTEM_ACTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/fhir"): (SAMPLE, "c"),  # a transaction creating one Task
    ("GET", "/fhir/_history"): ("*", "s"),
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the template, e.g. /fhir/Task/{resource_id}

    @property
    def resource_type(self) -> str | None:
        parts = self.path.split("/")
        return parts[2] if len(parts) > 2 and parts[2][:1].isupper() else None

    @property
    def suffix(self) -> str:
        return self.path.removeprefix(f"/fhir/{self.resource_type}")

    def needs(self) -> tuple[str, str]:
        """(resource type or "*", SMART action) the route needs; fails for an unknown route."""
        if self.resource_type is None:
            key = (self.method, self.path)
            assert key in SYSTEM_ACTIONS, f"classify the new route {key} in SYSTEM_ACTIONS"
            return SYSTEM_ACTIONS[key]
        operation = (self.resource_type, self.method, self.suffix)
        if operation in OPERATION_ACTIONS:
            return self.resource_type, OPERATION_ACTIONS[operation]
        key = (self.method, self.suffix)
        assert key in TYPE_ACTIONS, f"classify the new route {self.method} {self.path}"
        return self.resource_type, TYPE_ACTIONS[key]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def all_routes(app: FastAPI) -> Iterator[Route]:
    for route in iter_route_contexts(app.routes):
        for method in sorted(route.methods or ()):
            if method != "HEAD" and route.path:
                yield Route(method, route.path)


def protected_routes(app: FastAPI) -> list[Route]:
    return [
        r for r in all_routes(app) if r.path.startswith("/fhir") and not PUBLIC_FHIR.match(r.path)
    ]


def request_for(route: Route, *, resource_id: str = "matrix-1", body: Any = None) -> dict[str, Any]:
    """httpx.request keyword arguments for one call of ``route`` (ids filled in)."""
    url = route.path.replace("{resource_id}", resource_id).replace("{version_id}", "1")
    kwargs: dict[str, Any] = {"method": route.method, "url": url}
    rtype = route.resource_type
    if route.method == "PATCH":
        kwargs["content"] = orjson.dumps(body if body is not None else [])
        kwargs["headers"] = {"Content-Type": "application/json-patch+json"}
    elif route.method in ("POST", "PUT") and route.suffix == "/_search":
        kwargs["content"] = b"_count=1"
        kwargs["headers"] = {"Content-Type": "application/x-www-form-urlencoded"}
    elif route.method in ("POST", "PUT") and rtype is None:
        entry = {"request": {"method": "POST", "url": SAMPLE}, "resource": task(requester=ORG)}
        default = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        kwargs["json"] = body if body is not None else default
        kwargs["headers"] = FHIR_JSON
    elif route.method in ("POST", "PUT"):
        default = {"resourceType": rtype, "id": resource_id}
        kwargs["json"] = body if body is not None else default
        kwargs["headers"] = FHIR_JSON
    return kwargs


def without(action: str) -> str:
    return "".join(a for a in ACTIONS if a != action)


@dataclass
class Minter:
    """Signs tokens for one registered client, in every shape the matrix needs."""

    app: FastAPI

    async def __call__(
        self,
        scopes: str,
        *,
        now: datetime | None = None,
        issuer: str = f"{BASE}/auth",
        audience: str = f"{BASE}/fhir",
        ring: SigningKeyRing | None = None,
    ) -> str:
        return issue_access_token(
            client_id=CLIENT_ID,
            organization=ORG,
            scopes=ScopeSet.parse(scopes),
            ring=ring or await self.app.state.auth.ring(),
            issuer=issuer,
            audience=audience,
            now=now or datetime.now(UTC),
        ).access_token

    async def forged(self, scopes: str) -> str:
        """Same kid as the server's active key, signed by another key."""
        real = (await self.app.state.auth.ring()).active
        other = SigningKeyRing.generate(real.alg).active
        ring = SigningKeyRing([SigningKey(real.kid, real.alg, other.key)], active_kid=real.kid)
        return await self(scopes, ring=ring)


@pytest.fixture
async def mint(app: FastAPI, issue_token: TokenFactory) -> AsyncIterator[Minter]:
    await issue_token(organization=ORG, scopes="system/*.cruds", client_id=CLIENT_ID)
    yield Minter(app)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    http: httpx.AsyncClient, kwargs: dict[str, Any], token: str | None
) -> httpx.Response:
    headers = {**kwargs.get("headers", {}), **(bearer(token) if token else {})}
    return await http.request(**{**kwargs, "headers": headers})


def token_failure(r: httpx.Response) -> str | None:
    """Why ``r`` is not a proper invalid_token answer; None if it is."""
    challenge = r.headers.get("WWW-Authenticate", "")
    if r.status_code != 401:
        return f"status {r.status_code}: {r.text[:200]}"
    if not challenge.startswith("Bearer ") or 'error="invalid_token"' not in challenge:
        return f"WWW-Authenticate {challenge!r}"
    return _outcome_problem(r, "login")


def scope_failure(r: httpx.Response) -> str | None:
    challenge = r.headers.get("WWW-Authenticate", "")
    if r.status_code != 403:
        return f"status {r.status_code}: {r.text[:200]}"
    if not challenge.startswith("Bearer ") or 'error="insufficient_scope"' not in challenge:
        return f"WWW-Authenticate {challenge!r}"
    return _outcome_problem(r, "forbidden")


def _outcome_problem(r: httpx.Response, code: str) -> str | None:
    if not r.headers.get("content-type", "").startswith("application/fhir+json"):
        return f"content-type {r.headers.get('content-type')!r}"
    body = r.json()
    if body.get("resourceType") != "OperationOutcome" or body["issue"][0]["code"] != code:
        return f"body {body}"
    return None


# --- the route list itself --------------------------------------------------------------------


def test_route_list_covers_every_type_and_system_route(app: FastAPI) -> None:
    routes = protected_routes(app)
    paths = {r.path for r in routes}
    assert "/fhir/metadata" not in paths
    assert not any(p.startswith("/fhir/.well-known") for p in paths)
    assert {"/fhir", "/fhir/_history", "/fhir/Task/{resource_id}"} <= paths
    assert {r.resource_type for r in routes} >= {"Task", "Patient", "AuditEvent", "Consent"}
    for route in routes:
        route.needs()  # every protected route is classified (a new one fails here)


def test_every_route_outside_fhir_is_known_public(app: FastAPI) -> None:
    outside = {
        (r.method, r.path)
        for r in all_routes(app)
        if not r.path.startswith(("/fhir", "/v1")) or PUBLIC_FHIR.match(r.path)
    }
    assert outside == set(PUBLIC_ROUTES), "classify new public routes in PUBLIC_ROUTES"


async def test_every_jms_route_refuses_a_missing_or_bad_token(
    app: FastAPI, http: httpx.AsyncClient, mint: Minter
) -> None:
    """The JMS API (/v1) is protected like FHIR: 401 OperationOutcome + WWW-Authenticate."""
    expired = await mint("system/*.cruds", now=datetime.now(UTC) - timedelta(hours=1))
    v1 = [r for r in all_routes(app) if r.path.startswith("/v1")]
    assert len(v1) >= 10
    for route in v1:
        path = route.path.replace("{", "").replace("}", "")
        for headers in ({}, bearer(expired)):
            r = await http.request(route.method, path, headers=headers, json={})
            assert r.status_code == 401, f"{route.method} {route.path}: {r.status_code}"
            assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
            assert r.json()["resourceType"] == "OperationOutcome"


async def test_public_routes_answer_without_a_token(http: httpx.AsyncClient, mint: Minter) -> None:
    expired = await mint("system/*.cruds", now=datetime.now(UTC) - timedelta(hours=1))
    for (method, path), status in PUBLIC_ROUTES.items():
        for headers in ({}, bearer(expired)):  # a stale token must not break them either
            r = await http.request(method, path, headers=headers)
            assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text[:200]}"
            assert 'error="invalid_token"' not in r.headers.get("WWW-Authenticate", "")
    token = await http.post("/auth/token", data={"grant_type": "client_credentials"})
    assert token.json()["error"] == "invalid_client"
    assert token.headers["content-type"].startswith("application/json")


# --- every route: no token, wrong scope -----------------------------------------------------------


async def test_every_protected_route_refuses_a_missing_token(
    app: FastAPI, http: httpx.AsyncClient, mint: Minter
) -> None:
    failures = []
    for route in protected_routes(app):
        r = await call(http, request_for(route), None)
        if problem := token_failure(r):
            failures.append(f"{route}: {problem}")
    assert not failures, "\n".join(failures)
    await assert_nothing_written(app, mint)


async def test_every_protected_route_refuses_a_token_without_its_scope(
    app: FastAPI, http: httpx.AsyncClient, mint: Minter
) -> None:
    failures = []
    for route in protected_routes(app):
        rtype, action = route.needs()
        # Everything on the type except the one action the route needs.
        token = await mint(f"system/{rtype}.{without(action)}")
        r = await call(http, request_for(route), token)
        if problem := scope_failure(r):
            failures.append(f"{route} with system/{rtype}.{without(action)}: {problem}")
    assert not failures, "\n".join(failures)
    await assert_nothing_written(app, mint)


async def test_openid_alone_is_refused_everywhere(
    app: FastAPI, http: httpx.AsyncClient, mint: Minter
) -> None:
    token = await mint("openid fhirUser")
    failures = []
    for route in protected_routes(app):
        if problem := scope_failure(await call(http, request_for(route), token)):
            failures.append(f"{route}: {problem}")
    assert not failures, "\n".join(failures)


async def assert_nothing_written(app: FastAPI, mint: Minter) -> None:
    """No refused request left a resource behind (searched: history is fenced on PostgreSQL).
    AuditEvents are the exception: every refusal is audited (test_part2, api/conftest.py)."""
    admin = bearer(await mint("system/*.cruds handoff/admin"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        for rtype in SUPPORTED_TYPES:
            if rtype == "AuditEvent":
                r = await c.get("/fhir/AuditEvent", params={"outcome": "0"}, headers=admin)
                assert all(e["resource"]["action"] != "C" for e in r.json().get("entry", [])), (
                    "a refused request recorded a successful create"
                )
                continue
            r = await c.get(f"/fhir/{rtype}", headers=admin)
            assert r.status_code == 200, r.text
            assert r.json().get("entry", []) == [], rtype


# --- the sampled type: the whole matrix ----------------------------------------------------------


def sample_routes(app: FastAPI) -> list[Route]:
    routes = [r for r in protected_routes(app) if r.resource_type in (SAMPLE, None)]
    assert len(routes) == len(TYPE_ACTIONS) + len(SYSTEM_ACTIONS)
    return routes


@pytest.mark.parametrize(
    "failure", ["missing", "expired", "bad_signature", "wrong_audience", "wrong_issuer"]
)
async def test_sample_routes_refuse_bad_tokens(
    app: FastAPI, http: httpx.AsyncClient, mint: Minter, failure: str
) -> None:
    scopes = "system/*.cruds"
    token = {
        "missing": None,
        "expired": await mint(scopes, now=datetime.now(UTC) - timedelta(minutes=6)),
        "bad_signature": await mint.forged(scopes),
        "wrong_audience": await mint(scopes, audience="https://other.example.org/fhir"),
        "wrong_issuer": await mint(scopes, issuer="https://idp.example.org/auth"),
    }[failure]
    failures = []
    for route in sample_routes(app):
        if problem := token_failure(await call(http, request_for(route), token)):
            failures.append(f"{route}: {problem}")
    assert not failures, "\n".join(failures)
    await assert_nothing_written(app, mint)


async def test_tampered_and_malformed_tokens_are_invalid_token(
    http: httpx.AsyncClient, mint: Minter
) -> None:
    good = await mint("system/*.cruds")
    header, payload, signature = good.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "system/*.cruds handoff/admin"  # an escalation attempt
    raised = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    for token in (f"{header}.{raised}.{signature}", "not-a-jwt", f"{header}.{payload}."):
        r = await http.get("/fhir/Task", headers=bearer(token))
        assert token_failure(r) is None, (token[:20], r.status_code, r.text)
    for scheme in (f"Basic {good}", f"bearer{good}", "Bearer "):
        r = await http.get("/fhir/Task", headers={"Authorization": scheme})
        assert token_failure(r) is None, (scheme[:12], r.text)
    assert (await http.get("/fhir/Task", headers={"Authorization": f"bearer {good}"})).is_success


async def create_sample(http: httpx.AsyncClient, mint: Minter) -> dict[str, Any]:
    token = await mint("system/Task.c")
    r = await http.post(
        "/fhir/Task", json=task(requester=ORG, owner=ORG), headers={**FHIR_JSON, **bearer(token)}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_sample_routes_work_with_exactly_their_scope(
    app: FastAPI, http: httpx.AsyncClient, mint: Minter
) -> None:
    """The narrowest SMART scope for each interaction is enough (not 401, not 403: 2xx)."""
    failures = []
    for route in sample_routes(app):
        rtype, action = route.needs()
        scope = f"system/{rtype}.{action}"
        existing = await create_sample(http, mint)
        rid = existing["id"]
        body: Any = None
        headers: dict[str, str] = {}
        if route.method == "PUT":
            body = dict(existing, status="accepted")
            headers = {"If-Match": 'W/"1"'}
        elif route.method == "PATCH":
            body = [{"op": "replace", "path": "/priority", "value": "urgent"}]
            headers = {"If-Match": 'W/"1"'}  # a Task takes no change without it
        elif route.method == "POST" and route.suffix == "":
            body = task(requester=ORG, owner=ORG)
        kwargs = request_for(route, resource_id=rid, body=body)
        kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
        r = await call(http, kwargs, await mint(scope))
        if not r.is_success:
            failures.append(f"{route} with {scope}: {r.status_code} {r.text[:300]}")
    assert not failures, "\n".join(failures)


async def test_sample_reads_and_writes_see_the_data(http: httpx.AsyncClient, mint: Minter) -> None:
    """Exact scopes do not just avoid 401/403: they return the client's own data."""
    existing = await create_sample(http, mint)
    rid = existing["id"]
    search = await http.get("/fhir/Task", headers=bearer(await mint("system/Task.s")))
    assert [e["resource"]["id"] for e in search.json()["entry"]] == [rid]
    history_token = bearer(await mint("system/Task.s"))
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # on PostgreSQL history shows a commit once older transactions finished
        history = (await http.get("/fhir/Task/_history", headers=history_token)).json()
        if "entry" in history or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [e["resource"]["id"] for e in history["entry"]] == [rid]
    read = await http.get(f"/fhir/Task/{rid}", headers=bearer(await mint("system/Task.r")))
    assert read.json()["id"] == rid
    deleted = await http.delete(f"/fhir/Task/{rid}", headers=bearer(await mint("system/Task.d")))
    assert deleted.status_code == 200
    gone = await http.get(f"/fhir/Task/{rid}", headers=bearer(await mint("system/Task.r")))
    assert gone.status_code == 410


async def test_insufficient_scope_names_the_missing_permission(
    http: httpx.AsyncClient, mint: Minter
) -> None:
    r = await http.get("/fhir/Patient", headers=bearer(await mint("system/Patient.r")))
    assert scope_failure(r) is None
    diagnostics = r.json()["issue"][0]["diagnostics"]
    assert "search" in diagnostics and "Patient" in diagnostics
    assert "Patient" in r.headers["WWW-Authenticate"]


async def test_wrong_scope_request_id_is_echoed(http: httpx.AsyncClient, mint: Minter) -> None:
    rid = uuid.uuid4().hex
    r = await http.get(
        "/fhir/Task", headers={**bearer(await mint("system/Patient.s")), "X-Request-ID": rid}
    )
    assert r.status_code == 403 and r.headers["X-Request-ID"] == rid
