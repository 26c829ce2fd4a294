"""Dependencies as ``Annotated`` aliases, defined once."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.security import OAuth2

from service.api.responses import fhir_base, public_base
from service.auth.principal import Principal
from service.settings import Settings
from service.workflows.access import access_filter
from service.workflows.authn import Authenticator
from service.workflows.context import WorkflowContext

# Declares SMART Backend Services' client_credentials flow in OpenAPI, so Swagger UI's
# Authorize button can fetch a token with a client id and secret.
oauth2_scheme = OAuth2(
    flows=OAuthFlows(
        clientCredentials=OAuthFlowClientCredentials(
            tokenUrl="/auth/token",
            scopes={
                "system/*.cruds": "everything the client is registered for",
                "system/Task.rus": "poll and update referral Tasks",
                "system/*.rs": "read and search",
            },
        )
    ),
    scheme_name="SMART",
    description="SMART Backend Services: client_credentials with a client secret (demo) or a "
    "signed JWT assertion (private_key_jwt).",
    auto_error=False,
)


# Dependencies are ``async def`` even when they do not await: FastAPI runs plain ``def``
# dependencies in a worker thread, a thread hop per request for a dictionary lookup.
async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_authenticator(request: Request) -> Authenticator:
    state = request.app.state
    if getattr(state, "auth", None) is None:
        state.auth = Authenticator(engine=state.engine, settings=state.settings)
    auth: Authenticator = state.auth
    return auth


AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


def token_issuer(request: Request, settings: Settings) -> str:
    return public_base(request, settings) + "/auth"


async def get_principal(
    request: Request,
    settings: SettingsDep,
    auth: AuthenticatorDep,
    authorization: Annotated[str | None, Security(oauth2_scheme)],
) -> Principal:
    principal = await auth.authenticate(
        authorization,
        issuer=token_issuer(request, settings),
        audience=fhir_base(request, settings),
    )
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _context(request: Request, settings: Settings, principal: Principal | None) -> WorkflowContext:
    state = request.app.state
    base = fhir_base(request, settings)
    return WorkflowContext(
        engine=state.engine,
        settings=settings,
        base_url=base,
        request_id=getattr(request.state, "request_id", ""),
        principal=principal,
        access=access_filter(principal, "r", base_url=base) if principal else _deny_all,
        search_access=access_filter(principal, "s", base_url=base) if principal else _deny_all,
        rules=state.rules,
    )


def _deny_all(*_args: object) -> None:
    return None


async def get_context(
    request: Request, settings: SettingsDep, principal: PrincipalDep
) -> WorkflowContext:
    return _context(request, settings, principal)


async def get_public_context(request: Request, settings: SettingsDep) -> WorkflowContext:
    """For public routes (metadata): no principal, and no data access."""
    return _context(request, settings, None)


ContextDep = Annotated[WorkflowContext, Depends(get_context)]
PublicContextDep = Annotated[WorkflowContext, Depends(get_public_context)]
