"""Dependencies as ``Annotated`` aliases, defined once."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.routing import APIRoute
from fastapi.security import OAuth2
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.responses import fhir_base, token_base
from service.auth.principal import Principal
from service.auth.scopes import Action
from service.domain.text import NUL, nul_message
from service.errors import InsufficientScopeError, InvalidRequestError, ServiceError
from service.search.execute import AccessFilter
from service.settings import Settings
from service.workflows import audit
from service.workflows.access import access_filter, tenancy_filter
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
        from service.telemetry import instrument_httpx_client

        instrument_httpx_client(request.app, state.auth.http)
    auth: Authenticator = state.auth
    return auth


AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


def token_issuer(request: Request, settings: Settings) -> str:
    return token_base(request, settings) + "/auth"


def token_audience(request: Request, settings: Settings) -> str:
    return token_base(request, settings) + "/fhir"


async def authenticate(request: Request, authorization: str | None) -> Principal:
    settings: Settings = request.app.state.settings
    principal = await (await get_authenticator(request)).authenticate(
        authorization,
        issuer=token_issuer(request, settings),
        audience=token_audience(request, settings),
    )
    request.state.principal = principal
    return principal


PURPOSES = frozenset({"TREAT", "ETREAT", "HPAYMT", "HOPERAT", "PUBHLTH", "HRESCH", "COC"})


def _purpose_and_emergency(request: Request, principal: Principal | None) -> tuple[str, str | None]:
    purpose = request.headers.get("x-purpose-of-use", "TREAT").strip().upper()
    if purpose not in PURPOSES:
        raise InvalidRequestError(
            f"X-Purpose-Of-Use must be one of {', '.join(sorted(PURPOSES))}",
            expression=["X-Purpose-Of-Use"],
        )
    reason = request.headers.get("x-break-glass-reason")
    if reason is None:
        return purpose, None
    reason = reason.strip()
    if principal is None or not principal.scopes.break_glass:
        raise InsufficientScopeError(
            "Breaking the glass needs the handoff/break-glass scope (42 CFR Part 2 medical "
            "emergency exception)"
        )
    if len(reason) < 10:
        raise InvalidRequestError(
            "X-Break-Glass-Reason must state the medical emergency (at least 10 characters)",
            expression=["X-Break-Glass-Reason"],
        )
    return "ETREAT", reason[:500]


def _context(request: Request, settings: Settings, principal: Principal | None) -> WorkflowContext:
    state = request.app.state
    base = fhir_base(request, settings)
    purpose, emergency = _purpose_and_emergency(request, principal)

    def access(action: Action) -> AccessFilter:
        if principal is None:
            return _deny_all
        return access_filter(
            principal, action, base_url=base, purpose=purpose, emergency=emergency is not None
        )

    return WorkflowContext(
        engine=state.engine,
        settings=settings,
        base_url=base,
        request_id=getattr(request.state, "request_id", ""),
        principal=principal,
        access=access("r"),
        search_access=access("s"),
        write_access=(
            tenancy_filter(principal, purpose=purpose, emergency=emergency is not None)
            if principal
            else _deny_all
        ),
        rules=state.rules,
        purpose=purpose,
        emergency_reason=emergency,
    )


def _deny_all(*_args: object) -> None:
    return None


async def get_context(
    request: Request, authorization: Annotated[str | None, Security(oauth2_scheme)]
) -> WorkflowContext:
    """The request's context. Its route (an ``AuditedRoute``) records, once the handler has
    answered, the AuditEvent of what it read or of its failure (writes record theirs in their
    own transaction).

    One dependency that authenticates itself, rather than context <- principal <- settings,
    authenticator: FastAPI's dependency solving costs per level, on every request. (The
    ``Security`` parameter is what declares the bearer token in OpenAPI for Swagger UI.)"""
    principal = await authenticate(request, authorization)
    ctx = _context(request, request.app.state.settings, principal)
    request.state.audit_ctx = ctx
    state = request.scope.setdefault("state", {})
    if _CLIENT_SLOT not in state:
        request.app.state.client_concurrency.enter(principal.client_id)  # 429 past its share
        state[_CLIENT_SLOT] = principal.client_id
    # An id or search value with U+0000 (%00) would fail PostgreSQL (service.domain.text).
    if b"%00" in request.scope.get("query_string", b"") or NUL in request.scope["path"]:
        raise InvalidRequestError(nul_message("the URL"))
    return ctx


_CLIENT_SLOT = "handoff.client_slot"


def _leave_client_slot(request: Request) -> None:
    client_id = (request.scope.get("state") or {}).pop(_CLIENT_SLOT, None)
    if client_id is not None:
        request.app.state.client_concurrency.leave(client_id)


class AuditedRoute(APIRoute):
    """A route whose handler, once it has answered or failed, records the request's AuditEvent
    (``audit.finish_request``) for the context ``get_context`` made, and gives back the
    client's concurrency slot ``get_context`` took (``api.fairness``). Every router with routes
    that take a ``ContextDep`` uses it (``route_class=AuditedRoute``).

    Not a dependency with ``yield``: FastAPI wraps those in exit stacks and a shielded cancel
    scope, measured at ~3 % of a read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = _direct_handler(self) or super().get_route_handler()
        needs_context = any(d.call is get_context for d in self.dependant.dependencies)

        async def finish(request: Request, error: BaseException | None) -> None:
            ctx = getattr(request.state, "audit_ctx", None)  # None: refused before a context
            if ctx is not None:
                await audit.finish_request(ctx, error=error)

        async def audited(request: Request) -> Response:
            try:
                try:
                    response = await handle(request)
                except BaseException as exc:
                    if (
                        needs_context
                        and getattr(request.state, "audit_ctx", None) is None
                        and _body_unreadable(exc)
                    ):
                        # FastAPI parses a JSON body before it solves any dependency, so a
                        # body that is not JSON fails before the caller is known: authenticate
                        # now, so that an anonymous caller is refused (401) and a known one
                        # audited (also when it is over its share: 429).
                        try:
                            await get_context(request, request.headers.get("authorization"))
                        except ServiceError as refused:
                            await finish(request, refused)
                            raise
                    await finish(request, exc)
                    raise
                await finish(request, None)
                return response
            finally:
                _leave_client_slot(request)

        return audited


_DIRECT = "__handoff_direct__"
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def direct(endpoint: Endpoint) -> Endpoint:
    """Opt a read, search or history endpoint into being called without FastAPI's per-request
    machinery (``_direct_handler``). The endpoint must take only the request, the context and
    string path parameters and answer a ``Response``; a marked endpoint that does not is an
    error when the app is built, not a silent fallback."""
    setattr(endpoint, _DIRECT, True)
    return endpoint


def _answers_a_response(endpoint: Callable[..., Any]) -> bool:
    try:
        answer = inspect.signature(endpoint, eval_str=True).return_annotation
    except (NameError, TypeError):
        return False
    return isinstance(answer, type) and issubclass(answer, Response)


def _direct_handler(route: APIRoute) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
    """The handler of a route that needs nothing from FastAPI's request machinery: it takes
    the request, the context and string path parameters, and answers a ``Response`` (reads,
    searches, histories). Called directly, as FastAPI would, without its per-request
    dependency solving, telemetry and exit stacks (~10 % of a read's CPU in the profile).
    Path parameters are checked with their declared constraints, and fail the same way
    (``RequestValidationError``, after authentication, as FastAPI orders them). None for any
    other route: FastAPI's handler serves it. Only endpoints marked ``@direct`` take it."""
    d = route.dependant
    endpoint = d.call
    if endpoint is None or not getattr(endpoint, _DIRECT, False):
        return None
    if (
        d.query_params
        or d.header_params
        or d.cookie_params
        or d.body_params
        or d.response_param_name
        or d.background_tasks_param_name
        or d.websocket_param_name
        or d.http_connection_param_name
        or d.security_scopes_param_name
        or [sub.call for sub in d.dependencies] != [get_context]
        or not inspect.iscoroutinefunction(endpoint)
        or not _answers_a_response(endpoint)
        or any(field.field_info.annotation is not str for field in d.path_params)
    ):
        raise TypeError(
            f"{endpoint.__qualname__} is marked @direct but takes more than the request, the "
            "context and string path parameters, or does not answer a Response"
        )
    context_name = d.dependencies[0].name
    assert context_name is not None
    request_name = d.request_param_name
    checks = [
        (field.name, TypeAdapter(Annotated[str, field.field_info])) for field in d.path_params
    ]

    async def direct(request: Request) -> Response:
        ctx = await get_context(request, request.headers.get("authorization"))
        values: dict[str, Any] = {context_name: ctx}
        errors: list[Any] = []
        for name, adapter in checks:
            try:
                values[name] = adapter.validate_python(request.path_params[name])
            except ValidationError as exc:
                errors.extend({**e, "loc": ("path", name, *e["loc"])} for e in exc.errors())
        if errors:
            raise RequestValidationError(errors)
        if request_name is not None:
            values[request_name] = request
        response: Response = await endpoint(**values)
        return response

    return direct


def _body_unreadable(exc: BaseException) -> bool:
    """FastAPI's failures to parse a JSON body (not JSON; not text)."""
    if isinstance(exc, RequestValidationError):
        return any(e.get("type") == "json_invalid" for e in exc.errors())
    return isinstance(exc, StarletteHTTPException) and exc.status_code == 400


async def get_public_context(request: Request, settings: SettingsDep) -> WorkflowContext:
    """For public routes (metadata): no principal, and no data access."""
    return _context(request, settings, None)


ContextDep = Annotated[WorkflowContext, Depends(get_context)]
PublicContextDep = Annotated[WorkflowContext, Depends(get_public_context)]
