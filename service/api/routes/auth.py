"""OAuth 2.0 token endpoint, signing keys and SMART configuration (all public)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.deps import AuthenticatorDep, SettingsDep, token_audience, token_issuer
from service.api.responses import public_base
from service.auth.errors import OAuthError
from service.auth.smart_configuration import smart_configuration
from service.auth.token_endpoint import TOKEN_RESPONSE_HEADERS
from service.fhir.r4 import SUPPORTED_TYPES

router = APIRouter(tags=["Authorization"])

SCOPES_SUPPORTED = [
    "system/*.cruds",
    "system/*.rs",
    *(f"system/{t}.cruds" for t in SUPPORTED_TYPES),
    "system/*.read",
    "system/*.write",
    "handoff/admin",
]

_TOKEN_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "scope": {"type": "string", "example": "system/Task.rus"},
                        "client_assertion_type": {
                            "type": "string",
                            "example": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        },
                        "client_assertion": {"type": "string"},
                        "client_id": {"type": "string"},
                        "client_secret": {"type": "string"},
                    },
                }
            }
        },
    }
}

_OAUTH_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {"type": "string"},
                    "error_description": {"type": "string"},
                },
            }
        }
    }
}


@router.post(
    "/auth/token",
    summary="Get an access token (client_credentials)",
    operation_id="token",
    openapi_extra=_TOKEN_FORM,
    responses={
        200: {"description": "An access token (at most 5 minutes, no refresh token)"},
        400: {
            "description": "invalid_request, invalid_scope, unsupported_grant_type",
            **_OAUTH_ERROR,
        },
        401: {"description": "invalid_client", **_OAUTH_ERROR},
    },
)
async def token(request: Request, settings: SettingsDep, auth: AuthenticatorDep) -> JSONResponse:
    """SMART Backend Services token endpoint: authenticate with a signed JWT assertion
    (`private_key_jwt`, RS384 or ES384) or, for development, a client secret (Basic or form)."""
    base = public_base(request, settings)
    try:
        form = await request.form()
        body = await auth.issue_token(
            [(k, v) for k, v in form.multi_items() if isinstance(v, str)],
            authorization=request.headers.get("authorization"),
            token_url=f"{base}/auth/token",
            issuer=token_issuer(request, settings),
            audience=token_audience(request, settings),
        )
    except OAuthError as exc:
        headers = dict(TOKEN_RESPONSE_HEADERS)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="handoff"'
        return JSONResponse(exc.as_json(), status_code=exc.status, headers=headers)
    return JSONResponse(body, headers=TOKEN_RESPONSE_HEADERS)


@router.get("/auth/jwks", summary="Public keys that sign access tokens", operation_id="jwks")
async def jwks(auth: AuthenticatorDep) -> dict[str, Any]:
    ring = await auth.ring()
    return ring.public_jwks()


@router.get(
    "/fhir/.well-known/smart-configuration",
    summary="SMART configuration",
    operation_id="smart_configuration",
)
async def smart_config(request: Request, settings: SettingsDep) -> JSONResponse:
    base = public_base(request, settings)
    doc = smart_configuration(
        base_url=f"{base}/fhir",
        token_url=f"{base}/auth/token",
        jwks_url=f"{base}/auth/jwks",
        scopes_supported=SCOPES_SUPPORTED,
        issuer=token_issuer(request, settings),
    )
    return JSONResponse(doc)


def capability_security(base: str) -> dict[str, Any]:
    """CapabilityStatement.rest.security: SMART service and the OAuth endpoints."""
    return {
        "security": {
            "cors": False,
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "extension": [
                {
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": f"{base}/auth/token"}],
                }
            ],
            "description": "SMART Backend Services (client_credentials, private_key_jwt).",
        }
    }
