"""Test-only pieces for the dashboard tests: a stand-in GET /v1/measures and a small OpenID
provider. Neither is part of the service.

``measures_stub_router`` answers in the shape of the measures contract, with numbers that
depend on the caller's organization (so a page showing another organization's figures is
caught) and one suppressed cell. Once the real GET /v1/measures is on the branch, the tests
stop mounting the stub (``mount_measures_stub`` does nothing when the app already has the
route) and compare the pages with the real answers.

``OidcProvider`` is an OpenID provider with discovery, JWKS, an authorize endpoint that consents
at once (redirects back with a code), and a token endpoint that checks the client secret, the
redirect URI and the PKCE verifier (S256) before it signs an ID token (RS256) with the user's
claims and the nonce.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import Route

from service.api.deps import AuditedRoute, ContextDep
from service.errors import InsufficientScopeError, InvalidRequestError

CASCADE = [
    ("released-at-risk", "Released at risk"),
    ("screened", "Screened"),
    ("referred", "Referred"),
    ("accepted-before-release", "Referral accepted before release"),
    ("contacted-72h", "Contacted within 72 hours"),
    ("treatment-14d", "Treatment within 14 days"),
]
MEASURES = [
    ("screening-72h", "Screened within 72 hours of booking", "screening", "proportion", "releases"),
    ("naloxone-at-release", "Naloxone in hand at release", "naloxone", "proportion", "releases"),
    ("naloxone-kits", "Naloxone kits distributed", "naloxone", "count", "kits"),
    (
        "referral-accepted-before-release-treatment",
        "Treatment referral accepted before release",
        "referral",
        "proportion",
        "releases",
    ),
    ("first-contact-hours", "Time to first contact after release", "contact", "median", "hours"),
    ("treatment-14d", "Treatment within 14 days of release", "treatment", "proportion", "releases"),
]
FACILITIES = ("Location/demo-county-jail-site", "Location/stub-annex")


def _seed(organization: str | None) -> int:
    """A different base count per organization (the administrator's is the largest)."""
    if organization is None:
        return 400
    return 40 + int(hashlib.sha256(organization.encode()).hexdigest(), 16) % 150


def _cell(n: int, admin: bool) -> int | str:
    return n if admin or n == 0 or n >= 11 else "<11"


def _months(start: date, end: date) -> list[str]:
    months, cursor = [], start.replace(day=1)
    while cursor <= end:
        months.append(cursor.strftime("%Y-%m"))
        cursor = (cursor + timedelta(days=32)).replace(day=1)
    return months


def stub_answer(
    organization: str | None,
    *,
    start: date,
    end: date,
    facility: str | None,
    intercept: int | None,
    stratify: list[str],
    only: list[str],
) -> dict[str, Any]:
    admin = organization is None
    base = _seed(organization) + (7 if facility else 0) + (3 * intercept if intercept else 0)
    cascade_counts = [base, base - 5, base - 15, base - 25, base // 3, 9]
    measures = []
    for index, (mid, title, group, scoring, unit) in enumerate(MEASURES):
        if only and mid not in only:
            continue
        denominator = base
        numerator = max(0, base - 10 * index - 3)
        if mid == "treatment-14d":
            numerator = 9  # a small cell: "<11" for an organization
        strata = []
        for name in stratify:
            values: list[str | int]
            if name == "month":
                values = list(_months(start, end))
            elif name == "facility":
                values = list(FACILITIES)
            elif name == "intercept":
                values = [3, 4]
            else:
                values = ["a", "b"]
            for k, value in enumerate(values):
                share_d = denominator // len(values) + (denominator % len(values) if k == 0 else 0)
                share_n = numerator // len(values) + (numerator % len(values) if k == 0 else 0)
                strata.append(_stratum(name, value, share_n, share_d, scoring, admin))
        entry = _stratum("", "", numerator, denominator, scoring, admin)
        del entry["stratifier"], entry["value"]
        measures.append(
            {
                "id": mid,
                "url": f"https://handoff.dev/fhir/Measure/{mid}",
                "title": title,
                "group": group,
                "scoring": scoring,
                "unit": unit,
                **entry,
                "strata": strata,
            }
        )
    return {
        "period": {"from": start.isoformat(), "to": end.isoformat()},
        "scope": "all" if admin else "organization",
        "organization": organization,
        "suppression": {"applied": not admin, "min_cell": 11, "shown_as": "<11"},
        "filters": {"facility": facility, "intercept": intercept},
        "measures": measures,
        "cascade": [
            {"step": step, "label": label, "count": _cell(count, admin)}
            for (step, label), count in zip(CASCADE, cascade_counts, strict=True)
        ],
    }


def _stratum(
    name: str, value: str | int, numerator: int, denominator: int, scoring: str, admin: bool
) -> dict[str, Any]:
    if scoring == "median":
        return {
            "stratifier": name,
            "value": value,
            "denominator": None,
            "numerator": None,
            "rate": None,
            "median_hours": 20.5 + numerator % 7,
        }
    if scoring == "count":
        return {
            "stratifier": name,
            "value": value,
            "denominator": None,
            "numerator": _cell(numerator, admin),
            "rate": None,
            "median_hours": None,
        }
    n, d = _cell(numerator, admin), _cell(denominator, admin)
    rate = (
        numerator / denominator
        if isinstance(n, int) and isinstance(d, int) and denominator
        else None
    )
    return {
        "stratifier": name,
        "value": value,
        "denominator": d,
        "numerator": n,
        "rate": round(rate, 4) if rate is not None else None,
        "median_hours": None,
    }


def stub_csv(answer: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "measure",
            "title",
            "stratifier",
            "value",
            "numerator",
            "denominator",
            "rate",
            "median_hours",
        ]
    )
    for m in answer["measures"]:
        for row in [{**m, "stratifier": "", "value": ""}, *m["strata"]]:
            writer.writerow(
                [
                    m["id"],
                    m["title"],
                    row["stratifier"],
                    row["value"],
                    "" if row["numerator"] is None else row["numerator"],
                    "" if row["denominator"] is None else row["denominator"],
                    "" if row["rate"] is None else row["rate"],
                    "" if row["median_hours"] is None else row["median_hours"],
                ]
            )
    return out.getvalue()


def measures_stub_router() -> APIRouter:
    router = APIRouter(route_class=AuditedRoute)

    @router.get("/v1/measures")
    async def measures(
        request: Request,
        ctx: ContextDep,
        start: Annotated[date, Query(alias="from")],
        end: Annotated[date, Query(alias="to")],
        facility: str | None = None,
        intercept: Annotated[int | None, Query(ge=0, le=5)] = None,
        stratify: str = "",
        measure: str = "",
        format: str = "json",
    ) -> Response:
        principal = ctx.principal
        assert principal is not None
        if not principal.scopes.allows("MeasureReport", "r"):
            raise InsufficientScopeError("scope does not permit 'r' on MeasureReport")
        if principal.organization is None and not principal.is_admin:
            raise InsufficientScopeError("measures need an organization or handoff/admin")
        if end < start:
            raise InvalidRequestError("'to' must not be before 'from'")
        answer = stub_answer(
            principal.organization,
            start=start,
            end=end,
            facility=facility,
            intercept=intercept,
            stratify=[s for s in stratify.split(",") if s],
            only=[m for m in measure.split(",") if m],
        )
        if format == "csv" or "text/csv" in request.headers.get("accept", ""):
            return Response(stub_csv(answer), media_type="text/csv; charset=utf-8")
        return JSONResponse(answer)

    return router


def mount_measures_stub(app: FastAPI) -> None:
    """Serve the stand-in /v1/measures unless the app has the real one."""
    if "/v1/measures" in _paths(app.router.routes):
        return
    app.include_router(measures_stub_router())


def _paths(routes: list[Any], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            found |= _paths(included.routes, prefix + route.include_context.prefix)
        elif isinstance(getattr(route, "path", None), str):
            found.add(prefix + route.path)
    return found


# --- a small OpenID provider ------------------------------------------------------------------


class OidcProvider:
    def __init__(
        self,
        *,
        client_id: str = "handoff-dashboard-test",
        client_secret: str = "dashboard-test-secret",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig"})
        self.issuer = ""  # set once listening
        self.user: dict[str, Any] = {"sub": "alice", "name": "Alice Example"}
        self.codes: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.jwks),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
            ]
        )

    async def discovery(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
            }
        )

    async def jwks(self, request: Request) -> JSONResponse:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != self.client_id or q.get("response_type") != "code":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return JSONResponse({"error": "invalid_request", "error_description": "PKCE"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": q["redirect_uri"],
            "nonce": q.get("nonce"),
            "challenge": q["code_challenge"],
            "claims": dict(self.user),
        }
        back = {"code": code, "state": q.get("state", "")}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode(back)}", status_code=302)

    async def token(self, request: Request) -> JSONResponse:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.token_requests.append(form)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if client_id != self.client_id or secret != self.client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        now = int(time.time())
        claims = {
            **grant["claims"],
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            **({"nonce": grant["nonce"]} if grant["nonce"] else {}),
        }
        id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.key)
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def running_provider() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    with serve_in_thread(provider.app) as base:
        provider.issuer = base
        yield provider
