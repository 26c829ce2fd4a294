"""POST /auth/token (SMART Backend Services), signing-key rotation, SMART configuration and
tokens from an external identity provider.

Client assertions are built here with joserfc and freshly generated keys, so the server's own
signing code is not what produces them.
"""

from __future__ import annotations

import argparse
import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth.client_secrets import hash_client_secret
from service.clients_cli import add as cli_add
from service.settings import Settings
from service.storage.clients import ClientRecord, add_client, set_disabled
from service.storage.db import write_transaction
from service.workflows.authn import Authenticator
from tests.builders import FHIR_JSON, organization, task
from tests.conftest import BASE

TOKEN_URL = f"{BASE}/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_JWKS_URI = "https://ehr.example.org/.well-known/jwks.json"
IDP_ISSUER = "https://idp.example.org/realms/handoff"
IDP_JWKS_URL = f"{IDP_ISSUER}/protocol/openid-connect/certs"

Key = RSAKey | ECKey


def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"alg": "RS384", "use": "sig"}, auto_kid=True)


def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"}, auto_kid=True)


@pytest.fixture(scope="session")
def rs384() -> RSAKey:
    return rsa_key()


@pytest.fixture(scope="session")
def es384() -> ECKey:
    return ec_key()


def public_jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [dict(k.as_dict(private=False)) for k in keys]}


def now() -> int:
    return int(datetime.now(UTC).timestamp())


def assertion(
    key: Key,
    client_id: str,
    *,
    alg: str | None = None,
    aud: str = TOKEN_URL,
    exp_in: int = 240,
    jti: str | None = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    if alg is not None and alg != key.alg:  # joserfc refuses to sign with a key's other alg
        key = type(key).import_key({**key.as_dict(private=True), "alg": alg})
    alg = alg or str(key.alg)
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now() + exp_in,
        "iat": now(),
        "jti": jti or uuid.uuid4().hex,
        **claims,
    }
    head = {"alg": alg, "kid": key.kid, "typ": "JWT", **(header or {})}
    return jwt.encode(head, body, key, algorithms=[alg])


def assertion_form(token: str, scope: str | None = None) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
    }
    if scope is not None:
        form["scope"] = scope
    return form


def claims_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def part(segment: str) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(
            base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        )
        return decoded

    header, payload, _ = token.split(".")
    return part(header), part(payload)


@dataclass
class Registry:
    engine: AsyncEngine

    async def add(
        self,
        *,
        scopes: str = "system/*.cruds",
        organization: str | None = "Organization/org-a",
        jwks: dict[str, Any] | None = None,
        jwks_uri: str | None = None,
        secret: str | None = None,
        client_id: str | None = None,
    ) -> str:
        cid = client_id or f"client-{uuid.uuid4().hex[:8]}"
        async with write_transaction(self.engine) as conn:
            await add_client(
                conn,
                ClientRecord(
                    client_id=cid,
                    name=cid,
                    organization=organization,
                    scopes=scopes,
                    secret_hash=hash_client_secret(secret) if secret else None,
                    jwks=jwks,
                    jwks_uri=jwks_uri,
                    disabled=False,
                    created=datetime.now(UTC),
                ),
            )
        return cid

    async def disable(self, client_id: str) -> None:
        async with write_transaction(self.engine) as conn:
            assert await set_disabled(conn, client_id, True)


@pytest.fixture
def registry(engine: AsyncEngine) -> Registry:
    return Registry(engine)


@dataclass
class FakeWeb:
    """A MockTransport standing in for a client's jwks_uri and an IdP's JWKS endpoint."""

    documents: dict[str, Any] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.calls.append(url)
        if url not in self.documents:
            return httpx.Response(404)
        return httpx.Response(
            self.status.get(url, 200),
            json=self.documents[url],
            headers={"Cache-Control": "max-age=300"},
        )


@pytest.fixture
async def web(app: FastAPI, engine: AsyncEngine) -> AsyncIterator[FakeWeb]:
    """Install an Authenticator whose outgoing HTTP goes to a FakeWeb."""
    fake = FakeWeb()
    app.state.auth = Authenticator(
        engine=engine,
        settings=app.state.settings,
        http=httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)),
    )
    yield fake
    await app.state.auth.close()


@pytest.fixture
async def http(app: FastAPI, web: FakeWeb) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_oauth_error(r: httpx.Response, status: int, error: str) -> str:
    """RFC 6749 §5.2 JSON (never a FHIR OperationOutcome), not cached; the description."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert "resourceType" not in body
    assert body["error"] == error, body
    assert r.headers["Cache-Control"] == "no-store"
    description: str = body["error_description"]
    return description


async def get_token(http: httpx.AsyncClient, form: dict[str, str], **kw: Any) -> dict[str, Any]:
    r = await http.post("/auth/token", data=form, **kw)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# --- private_key_jwt --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_signed_assertion_gets_a_short_lived_token_that_works(
    http: httpx.AsyncClient, registry: Registry, rs384: RSAKey, es384: ECKey, alg: str
) -> None:
    key: Key = rs384 if alg == "RS384" else es384
    cid = await registry.add(jwks=public_jwks(key), scopes="system/Task.rs system/Patient.rs")
    r = await http.post("/auth/token", data=assertion_form(assertion(key, cid)))
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "bearer"
    assert 0 < body["expires_in"] <= 300
    assert "refresh_token" not in body
    assert body["scope"] == "system/Patient.rs system/Task.rs"
    header, claims = claims_of(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == f"{BASE}/auth" and claims["aud"] == f"{BASE}/fhir"
    assert claims["sub"] == cid and claims["org"] == "Organization/org-a"
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    jwks = (await http.get("/auth/jwks")).json()
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    assert all("d" not in k for k in jwks["keys"])  # public halves only
    search = await http.get("/fhir/Task", headers=bearer(body["access_token"]))
    assert search.status_code == 200, search.text
    create = await http.post(
        "/fhir/Task",
        json=task(requester="Organization/org-a"),
        headers={**FHIR_JSON, **bearer(body["access_token"])},
    )
    assert create.status_code == 403  # granted rs, not c


async def test_replayed_assertion_is_invalid_client(
    http: httpx.AsyncClient, registry: Registry, es384: ECKey
) -> None:
    cid = await registry.add(jwks=public_jwks(es384))
    signed = assertion(es384, cid)
    await get_token(http, assertion_form(signed))
    again = await http.post("/auth/token", data=assertion_form(signed))
    assert "already been used" in assert_oauth_error(again, 401, "invalid_client")
    # A fresh jti is fine, and a rejected assertion does not burn its jti.
    early = assertion(es384, cid, jti="reusable", aud=f"{BASE}/fhir")
    assert_oauth_error(
        await http.post("/auth/token", data=assertion_form(early)), 401, "invalid_client"
    )
    await get_token(http, assertion_form(assertion(es384, cid, jti="reusable")))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": f"{BASE}/fhir"}, "'aud'"),
        ({"aud": "https://elsewhere.example.org/auth/token"}, "'aud'"),
        ({"exp_in": 600}, "5 minutes"),
        ({"exp_in": -120}, "expired"),
        ({"sub": "someone-else"}, "'sub'"),
        ({"alg": "RS256"}, "alg"),
        ({"header": {"jku": "https://attacker.example.org/jwks"}}, "jku"),
    ],
)
async def test_assertion_checks(
    http: httpx.AsyncClient,
    registry: Registry,
    rs384: RSAKey,
    changes: dict[str, Any],
    reason: str,
) -> None:
    cid = await registry.add(jwks=public_jwks(rs384))
    r = await http.post("/auth/token", data=assertion_form(assertion(rs384, cid, **changes)))
    assert reason in assert_oauth_error(r, 401, "invalid_client")


async def test_assertion_signed_by_an_unregistered_key_is_refused(
    http: httpx.AsyncClient, registry: Registry, es384: ECKey
) -> None:
    cid = await registry.add(jwks=public_jwks(es384))
    impostor = ec_key()
    impostor_claiming_kid = ECKey.import_key({**impostor.as_dict(private=True), "kid": es384.kid})
    for key in (impostor, impostor_claiming_kid):
        r = await http.post("/auth/token", data=assertion_form(assertion(key, cid)))
        assert_oauth_error(r, 401, "invalid_client")
    unknown = await http.post(
        "/auth/token", data=assertion_form(assertion(es384, "no-such-client"))
    )
    assert_oauth_error(unknown, 401, "invalid_client")
    secret_only = await registry.add(secret="s3cret-s3cret")
    r = await http.post("/auth/token", data=assertion_form(assertion(es384, secret_only)))
    assert "no registered keys" in assert_oauth_error(r, 401, "invalid_client")


async def test_jwks_uri_registration_is_fetched_and_cached(
    http: httpx.AsyncClient, registry: Registry, web: FakeWeb, rs384: RSAKey, es384: ECKey
) -> None:
    web.documents[CLIENT_JWKS_URI] = public_jwks(rs384, es384)
    cid = await registry.add(jwks_uri=CLIENT_JWKS_URI)
    for key in (rs384, es384, rs384):
        await get_token(http, assertion_form(assertion(key, cid)))
    assert web.calls == [CLIENT_JWKS_URI]  # once, then from the cache (max-age=300)
    matching_jku = assertion(es384, cid, header={"jku": CLIENT_JWKS_URI})
    await get_token(http, assertion_form(matching_jku))


async def test_unreachable_jwks_uri_is_invalid_client(
    http: httpx.AsyncClient, registry: Registry, web: FakeWeb, es384: ECKey
) -> None:
    web.documents[CLIENT_JWKS_URI] = public_jwks(es384)
    web.status[CLIENT_JWKS_URI] = 503
    cid = await registry.add(jwks_uri=CLIENT_JWKS_URI)
    r = await http.post("/auth/token", data=assertion_form(assertion(es384, cid)))
    assert "HTTP 503" in assert_oauth_error(r, 401, "invalid_client")
    plain_http = await registry.add(jwks_uri="http://ehr.example.org/jwks.json")
    r = await http.post("/auth/token", data=assertion_form(assertion(es384, plain_http)))
    assert "https" in assert_oauth_error(r, 401, "invalid_client")


async def test_cli_registered_jwks_file_client(
    http: httpx.AsyncClient,
    client: httpx.AsyncClient,
    settings: Settings,
    tmp_path: Any,
    rs384: RSAKey,
) -> None:
    org = (await client.post("/fhir/Organization", json=organization(), headers=FHIR_JSON)).json()
    jwks_file = tmp_path / "ehr.jwks.json"
    jwks_file.write_bytes(orjson.dumps(public_jwks(rs384)))
    args = argparse.Namespace(
        name="EHR",
        organization=f"Organization/{org['id']}",
        scopes="system/Task.rus",
        client_id=None,
        jwks_file=str(jwks_file),
        jwks_uri=None,
        secret=False,
    )
    registered = await cli_add(args, settings)
    assert registered["auth"] == "jwks" and "client_secret" not in registered
    body = await get_token(http, assertion_form(assertion(rs384, registered["client_id"])))
    assert body["scope"] == "system/Task.rus"
    assert claims_of(body["access_token"])[1]["org"] == f"Organization/{org['id']}"


# --- client secrets ---------------------------------------------------------------------------


async def test_client_secret_basic_and_post(http: httpx.AsyncClient, registry: Registry) -> None:
    cid = await registry.add(secret="correct horse battery", scopes="system/*.rs")
    basic = await get_token(
        http, {"grant_type": "client_credentials"}, auth=(cid, "correct horse battery")
    )
    posted = await get_token(
        http,
        {
            "grant_type": "client_credentials",
            "client_id": cid,
            "client_secret": "correct horse battery",
        },
    )
    for body in (basic, posted):
        assert body["scope"] == "system/*.rs"
        assert (await http.get("/fhir/Patient", headers=bearer(body["access_token"]))).is_success


async def test_wrong_or_missing_client_credentials(
    http: httpx.AsyncClient, registry: Registry
) -> None:
    cid = await registry.add(secret="correct horse battery")
    form = {"grant_type": "client_credentials"}
    wrong = await http.post("/auth/token", data=form, auth=(cid, "wrong"))
    assert_oauth_error(wrong, 401, "invalid_client")
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    wrong_post = await http.post(
        "/auth/token", data={**form, "client_id": cid, "client_secret": "wrong"}
    )
    assert_oauth_error(wrong_post, 401, "invalid_client")
    unknown = await http.post("/auth/token", data=form, auth=("nobody", "wrong"))
    assert_oauth_error(unknown, 401, "invalid_client")
    assert_oauth_error(await http.post("/auth/token", data=form), 401, "invalid_client")
    both = await http.post(
        "/auth/token",
        data={**form, "client_id": cid, "client_secret": "correct horse battery"},
        auth=(cid, "correct horse battery"),
    )
    assert_oauth_error(both, 400, "invalid_request")
    keyless = await registry.add()  # registered with neither secret nor keys
    r = await http.post("/auth/token", data=form, auth=(keyless, "anything"))
    assert_oauth_error(r, 401, "invalid_client")


@pytest.mark.parametrize("grant", ["authorization_code", "password", "refresh_token"])
async def test_unsupported_grant_type(
    http: httpx.AsyncClient, registry: Registry, grant: str
) -> None:
    cid = await registry.add(secret="correct horse battery")
    r = await http.post(
        "/auth/token", data={"grant_type": grant}, auth=(cid, "correct horse battery")
    )
    assert_oauth_error(r, 400, "unsupported_grant_type")


async def test_missing_grant_type_is_invalid_request(http: httpx.AsyncClient) -> None:
    r = await http.post("/auth/token", data={"scope": "system/*.rs"})
    assert_oauth_error(r, 400, "invalid_request")


# --- scopes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested",
    [
        "system/Observation.rs",
        "patient/Task.rs",
        "openid fhirUser",
        "system/Task.xyz",
        "handoff/admin",
    ],
)
async def test_scope_nothing_can_be_granted_is_invalid_scope(
    http: httpx.AsyncClient, registry: Registry, requested: str
) -> None:
    cid = await registry.add(secret="correct horse battery", scopes="system/Task.rs")
    r = await http.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": requested},
        auth=(cid, "correct horse battery"),
    )
    assert_oauth_error(r, 400, "invalid_scope")


@pytest.mark.parametrize(
    ("registered", "requested", "granted"),
    [
        (
            "system/Task.rus system/Patient.rs",
            "system/*.cruds",
            "system/Patient.rs system/Task.rus",
        ),
        ("system/Task.rus", "system/Task.rs system/Observation.rs", "system/Task.rs"),
        ("system/Task.rus", "system/Task.read", "system/Task.rs"),
        (
            "system/*.rs",
            "system/Task.rs?owner=Organization/b",
            "system/Task.rs?owner=Organization/b",
        ),
        (
            "system/Task.rs?owner=Organization/b",
            "system/Task.cruds",
            "system/Task.rs?owner=Organization/b",
        ),
        ("system/*.cruds", "system/*.cruds handoff/admin openid", "system/*.cruds"),
        ("system/Task.rs", "", "system/Task.rs"),
    ],
)
async def test_granted_scope_is_within_registration(
    http: httpx.AsyncClient, registry: Registry, registered: str, requested: str, granted: str
) -> None:
    cid = await registry.add(secret="correct horse battery", scopes=registered)
    form = {"grant_type": "client_credentials"}
    if requested:
        form["scope"] = requested
    body = await get_token(http, form, auth=(cid, "correct horse battery"))
    assert body["scope"] == granted
    assert claims_of(body["access_token"])[1]["scope"] == granted


# --- client lifecycle and signing keys ----------------------------------------------------------


async def test_disabled_client_token_stops_working_at_once(
    http: httpx.AsyncClient, registry: Registry
) -> None:
    cid = await registry.add(secret="correct horse battery")
    body = await get_token(
        http, {"grant_type": "client_credentials"}, auth=(cid, "correct horse battery")
    )
    assert (await http.get("/fhir/Task", headers=bearer(body["access_token"]))).status_code == 200
    await registry.disable(cid)
    refused = await http.get("/fhir/Task", headers=bearer(body["access_token"]))
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert refused.json()["resourceType"] == "OperationOutcome"
    again = await http.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(cid, "correct horse battery"),
    )
    assert_oauth_error(again, 401, "invalid_client")


async def test_key_rotation_keeps_old_tokens_valid(
    app: FastAPI, engine: AsyncEngine, http: httpx.AsyncClient, registry: Registry
) -> None:
    cid = await registry.add(secret="correct horse battery")
    form = {"grant_type": "client_credentials"}
    before = (await get_token(http, form, auth=(cid, "correct horse battery")))["access_token"]
    old_kid = claims_of(before)[0]["kid"]
    new_kid = await app.state.auth.rotate_keys()
    assert new_kid != old_kid
    after = (await get_token(http, form, auth=(cid, "correct horse battery")))["access_token"]
    assert claims_of(after)[0]["kid"] == new_kid
    for token in (before, after):
        assert (await http.get("/fhir/Task", headers=bearer(token))).status_code == 200
    kids = {k["kid"] for k in (await http.get("/auth/jwks")).json()["keys"]}
    assert {old_kid, new_kid} <= kids

    # Another replica rotates: this one reloads the shared ring when it meets the new kid.
    replica = Authenticator(engine=engine, settings=app.state.settings)
    try:
        third_kid = await replica.rotate_keys()
        from_replica = await replica.issue_token(
            [("grant_type", "client_credentials")],
            authorization="Basic "
            + base64.b64encode(f"{cid}:correct horse battery".encode()).decode(),
            token_url=TOKEN_URL,
            issuer=f"{BASE}/auth",
            audience=f"{BASE}/fhir",
        )
    finally:
        await replica.close()
    assert claims_of(from_replica["access_token"])[0]["kid"] == third_kid
    for token in (before, after, from_replica["access_token"]):
        assert (await http.get("/fhir/Task", headers=bearer(token))).status_code == 200


async def test_smart_configuration(http: httpx.AsyncClient, registry: Registry) -> None:
    r = await http.get("/fhir/.well-known/smart-configuration", headers={"Accept": "text/html"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["token_endpoint"] == TOKEN_URL
    assert doc["jwks_uri"] == f"{BASE}/auth/jwks"
    assert doc["grant_types_supported"] == ["client_credentials"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert {"client-confidential-asymmetric", "permission-v2", "permission-v1"} <= set(
        doc["capabilities"]
    )
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"system/*.rs", "system/Task.cruds"} <= set(doc["scopes_supported"])
    assert "authorization_endpoint" not in doc
    # The advertised issuer is the iss of the tokens the token endpoint signs.
    cid = await registry.add(secret="correct horse battery")
    body = await get_token(
        http, {"grant_type": "client_credentials"}, auth=(cid, "correct horse battery")
    )
    assert claims_of(body["access_token"])[1]["iss"] == doc["issuer"]
    # Discovery is public and mirrored in the CapabilityStatement.
    meta = (await http.get("/fhir/metadata")).json()
    security = meta["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"][0]["valueUri"] == TOKEN_URL


async def test_smart_configuration_follows_the_public_base_url(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    app.state.settings = app.state.settings.model_copy(
        update={"public_base_url": "https://handoff.example.org"}
    )
    doc = (await http.get("/fhir/.well-known/smart-configuration")).json()
    assert doc["token_endpoint"] == "https://handoff.example.org/auth/token"
    assert doc["issuer"] == "https://handoff.example.org/auth"


# --- external identity provider ---------------------------------------------------------------


@dataclass
class Idp:
    key: RSAKey
    audience: str

    def token(self, **claims: Any) -> str:
        body = {
            "iss": IDP_ISSUER,
            "aud": self.audience,
            "azp": "partner-ehr",
            "sub": "service-account-4711",
            "scope": "system/Task.rs",
            "iat": now(),
            "exp": now() + 300,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(
            {"alg": "RS256", "kid": self.key.kid}, body, self.key, algorithms=["RS256"]
        )


@pytest.fixture
async def idp(app: FastAPI, engine: AsyncEngine, web: FakeWeb) -> AsyncIterator[Idp]:
    """An external issuer (Keycloak-like) configured in settings, its JWKS on the fake web."""
    key = RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)
    web.documents[IDP_JWKS_URL] = public_jwks(key)
    settings = app.state.settings.model_copy(
        update={
            "auth_issuer": IDP_ISSUER,
            "auth_jwks_url": IDP_JWKS_URL,
            "auth_audience": "handoff-api",
            "auth_organization_claim": "tenant",
        }
    )
    app.state.settings = settings
    await app.state.auth.close()
    app.state.auth = Authenticator(
        engine=engine,
        settings=settings,
        http=httpx.AsyncClient(transport=httpx.MockTransport(web.handler)),
    )
    yield Idp(key, "handoff-api")


async def test_external_issuer_token_maps_client_and_organization(
    http: httpx.AsyncClient, client: httpx.AsyncClient, idp: Idp
) -> None:
    mine = (
        await client.post(
            "/fhir/Task",
            json=task(requester="Organization/jail-1", owner="Organization/partner"),
            headers=FHIR_JSON,
        )
    ).json()
    await client.post(
        "/fhir/Task",
        json=task(requester="Organization/jail-1", owner="Organization/someone-else"),
        headers=FHIR_JSON,
    )
    token = idp.token(tenant="partner")  # a bare id in the configured claim
    r = await http.get("/fhir/Task", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [mine["id"]]
    reference = idp.token(tenant="Organization/partner")
    read = await http.get(f"/fhir/Task/{mine['id']}", headers=bearer(reference))
    assert read.status_code == 200
    # The scope claim limits it like any token: rs only.
    write = await http.post(
        "/fhir/Task",
        json=task(requester="Organization/partner"),
        headers={**FHIR_JSON, **bearer(token)},
    )
    assert write.status_code == 403


async def test_external_issuer_claims_to_principal(app: FastAPI, idp: Idp) -> None:
    """azp names the client (Keycloak's sub is a service-account user); the organization comes
    from the configured claim only."""
    auth: Authenticator = app.state.auth
    where = {"issuer": f"{BASE}/auth", "audience": f"{BASE}/fhir"}
    principal = await auth.authenticate("Bearer " + idp.token(tenant="partner"), **where)
    assert principal.client_id == "partner-ehr"
    assert principal.organization == "Organization/partner"
    assert principal.issuer == IDP_ISSUER and not principal.is_admin
    assert principal.scopes.allows("Task", "s") and not principal.scopes.allows("Task", "c")
    default_claim = idp.token(handoff_org="Organization/partner")
    assert (await auth.authenticate("Bearer " + default_claim, **where)).organization is None


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "someone-else"},
        {"exp": 1_000_000},
        {"tenant": ["Organization/a", "Organization/b"]},
        {"tenant": "Patient/1"},
    ],
)
async def test_external_issuer_token_checks(
    http: httpx.AsyncClient, idp: Idp, claims: dict[str, Any]
) -> None:
    r = await http.get("/fhir/Task", headers=bearer(idp.token(**{"tenant": "partner", **claims})))
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


async def test_external_issuer_forged_and_orgless_tokens(http: httpx.AsyncClient, idp: Idp) -> None:
    forger = Idp(
        RSAKey.import_key({**rsa_key().as_dict(private=True), "kid": idp.key.kid, "alg": "RS256"}),
        idp.audience,
    )
    r = await http.get("/fhir/Task", headers=bearer(forger.token(tenant="partner")))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    # Without an organization claim the client sees directory data only.
    orgless = idp.token(scope="system/Task.rs system/Organization.rs")
    assert (await http.get("/fhir/Organization", headers=bearer(orgless))).status_code == 200
    assert "entry" not in (await http.get("/fhir/Task", headers=bearer(orgless))).json()
    # Our own tokens keep working next to the external issuer's.
    assert (await http.get("/fhir/metadata")).status_code == 200


async def test_external_issuer_keys_unavailable_is_503(
    http: httpx.AsyncClient, idp: Idp, web: FakeWeb
) -> None:
    web.status[IDP_JWKS_URL] = 500  # before the first fetch: nothing cached
    r = await http.get("/fhir/Task", headers=bearer(idp.token(tenant="partner")))
    assert r.status_code == 503, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


# --- one issuer under a development server's several names ----------------------------------


async def token_at(app: FastAPI, base: str, cid: str) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as c:
        body = await get_token(c, {"grant_type": "client_credentials"}, auth=(cid, "s3cret-enough"))
    return str(body["access_token"])


async def get_at(app: FastAPI, base: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as c:
        return await c.get("/fhir/Patient", headers=bearer(token))


async def test_loopback_names_are_one_issuer_without_public_base_url(
    app: FastAPI, registry: Registry
) -> None:
    """HANDOFF_PUBLIC_BASE_URL unset: a token got at http://127.0.0.1:8000 works at
    http://localhost:8000 and [::1]; under an unrelated name it is refused, and the refusal
    names the setting that makes the server one issuer whatever the URL."""
    cid = await registry.add(secret="s3cret-enough", scopes="system/*.rs")
    token = await token_at(app, "http://127.0.0.1:8000", cid)
    assert claims_of(token)[1]["iss"] == "http://localhost:8000/auth"
    assert claims_of(token)[1]["aud"] == "http://localhost:8000/fhir"
    for base in ("http://localhost:8000", "http://[::1]:8000", "http://127.0.0.1:8000"):
        r = await get_at(app, base, token)
        assert r.status_code == 200, (base, r.text)
    # Links still name the host the client used (fhirpy refuses links to another base).
    assert (
        (await get_at(app, "http://127.0.0.1:8000", token))
        .json()["link"][0]["url"]
        .startswith("http://127.0.0.1:8000/fhir/")
    )
    for base in ("http://localhost:9000", "http://handoff.internal:8000"):
        r = await get_at(app, base, token)
        assert r.status_code == 401, (base, r.text)
        said = r.json()["issue"][0]["diagnostics"]
        assert "HANDOFF_PUBLIC_BASE_URL" in said, said
        assert "http://localhost:8000/auth" in said  # the token's issuer, and this server's:
        assert f"{base}/auth" in said
        assert "HANDOFF_PUBLIC_BASE_URL" in r.headers["WWW-Authenticate"]


async def test_public_base_url_is_the_only_issuer(
    settings: Settings, engine: AsyncEngine, registry: Registry
) -> None:
    """With HANDOFF_PUBLIC_BASE_URL set, tokens name it whatever URL reached the server."""
    from service.app import create_app

    app = create_app(
        settings.model_copy(update={"public_base_url": "https://handoff.example"}), engine=engine
    )
    cid = await registry.add(secret="s3cret-enough", scopes="system/*.rs")
    token = await token_at(app, "http://127.0.0.1:8000", cid)
    assert claims_of(token)[1]["iss"] == "https://handoff.example/auth"
    assert (await get_at(app, "http://10.0.0.5:8000", token)).status_code == 200
    minted_elsewhere = await token_at(
        create_app(
            settings.model_copy(update={"public_base_url": "https://other.example"}), engine=engine
        ),
        "http://127.0.0.1:8000",
        cid,
    )
    r = await get_at(app, "http://127.0.0.1:8000", minted_elsewhere)
    assert r.status_code == 401
    said = r.json()["issue"][0]["diagnostics"]
    assert "https://other.example/auth" in said and "HANDOFF_PUBLIC_BASE_URL" not in said
