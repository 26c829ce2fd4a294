"""The application factory: engine, routers, middleware, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy.ext.asyncio import AsyncEngine

from service import __version__
from service.api import docs
from service.api.disconnect import CancelOnDisconnectMiddleware
from service.api.errors import install_error_handlers
from service.api.fairness import ClientConcurrency
from service.api.middleware import (
    BodyLimitMiddleware,
    ContentNegotiationMiddleware,
    RequestHeadLimitMiddleware,
    RequestIdMiddleware,
)
from service.api.routes import (
    auth,
    fhir_measures,
    fhir_patient_match,
    health,
    subscriptions,
    system,
    v1_admin_identity,
    v1_appointments,
    v1_assessments,
    v1_consents,
    v1_custody,
    v1_directory,
    v1_followups,
    v1_hl7v2,
    v1_measures,
    v1_naloxone,
    v1_referrals,
    v1_webhooks,
)
from service.api.routes.resources import resource_router
from service.dashboard import routes as dashboard
from service.dashboard.sessions import DashboardSessionMiddleware
from service.fhir.r4 import SUPPORTED_TYPES
from service.logging_config import AccessLogMiddleware, configure_logging
from service.openapi_schemas import (
    fhir_component_schemas,
    parameters_without_nul,
    parameters_without_null,
    shared_responses,
)
from service.runtime import tune_garbage_collector
from service.settings import Settings, get_settings
from service.storage.db import create_engine
from service.telemetry import install_telemetry, instrument_engine
from service.workflows.rules import RuleSet, default_rules

DESCRIPTION = """
Handoff carries warm-handoff referrals, screenings and overdose-risk assessments from jails,
courts and community corrections to treatment, harm-reduction and peer-support organizations
as FHIR R4 resources.

* **FHIR base**: `/fhir` (CapabilityStatement at `/fhir/metadata`).
* **Health**: `/healthz`, `/readyz`.
"""

TAGS: list[dict[str, Any]] = [
    {"name": "FHIR system", "description": "Metadata, transaction/batch Bundles, history"},
    {"name": "Operations", "description": "Health and readiness probes"},
    {"name": "Authorization", "description": "OAuth 2.0 / SMART Backend Services"},
    {"name": "Administration", "description": "Person-identifier domains (handoff/admin)"},
    {
        "name": "JMS: referrals",
        "description": "For jail management systems: warm-handoff referrals and their status",
    },
    {
        "name": "Providers: appointments",
        "description": "For receiving programs without FHIR: appointments booked for a referral",
    },
    {
        "name": "Providers: follow-up",
        "description": "Contact log after release and the follow-up worklist (peer programs)",
    },
    {
        "name": "JMS: custody",
        "description": "Bookings, transfers and releases (a custody stay is a FHIR Encounter)",
    },
    {
        "name": "JMS: consent and disclosures",
        "description": "42 CFR Part 2 consents, revocation and the accounting of disclosures",
    },
    {
        "name": "JMS: assessments",
        "description": "For jail management systems: plain JSON, mapped to FHIR by Handoff",
    },
    {
        "name": "Naloxone (OEND)",
        "description": "Overdose education and naloxone distribution, overdose responses, summary",
    },
    {
        "name": "JMS: directory",
        "description": "Services to refer to, nearest first; providers say if they take patients",
    },
]


def build_rules(_settings: Settings) -> RuleSet:
    from service.features import appointments, custody, directory, measures, subscriptions
    from service.features import referrals as referrals
    from service.features.assessments import rules as assessments
    from service.features.naloxone import records as naloxone
    from service.workflows import consents, disclosure

    rules = default_rules()
    consents.register(rules)  # labels first: later rules and the index see them
    disclosure.register(rules)
    assessments.register(rules)
    referrals.register(rules)
    naloxone.register(rules)
    directory.register(rules)
    subscriptions.register(rules)
    custody.register(rules)
    appointments.register(rules)
    measures.register(rules)  # last: facts read what the other rules wrote
    return rules


# Resource types by expected request rate (providers poll Tasks; the rest follow).
_BUSIEST_TYPES = ("Task", "ServiceRequest", "Patient", "QuestionnaireResponse", "Observation")


def _by_traffic(resource_type: str) -> int:
    return (
        _BUSIEST_TYPES.index(resource_type)
        if resource_type in _BUSIEST_TYPES
        else len(_BUSIEST_TYPES)
    )


def create_app(settings: Settings | None = None, *, engine: AsyncEngine | None = None) -> FastAPI:
    """Build the app. With ``engine`` given (tests), the caller owns the engine's lifetime."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = None
        if getattr(app.state, "engine", None) is None:
            owned = app.state.engine = create_engine(settings)
        instrument_engine(app, app.state.engine)
        try:
            from service.features.assessments.rules import ensure_builtin_content

            await ensure_builtin_content(app.state.engine, settings, app.state.rules)
            if settings.demo:
                from service.demo import seed_demo

                await seed_demo(app)
            tune_garbage_collector(settings)
            if settings.subscription_worker:
                from service.features.subscriptions.worker import run_in_background

                app.state.notification_worker = run_in_background(
                    app.state.engine, settings, app.state.rules
                )
            yield
        finally:
            if getattr(app.state, "notification_worker", None) is not None:
                await app.state.notification_worker.stop()
                app.state.notification_worker = None
            if getattr(app.state, "auth", None) is not None:
                await app.state.auth.close()
                app.state.auth = None
            if owned is not None:
                await owned.dispose()

    app = FastAPIOffline(
        docs_url=None,  # service.api.docs serves /docs (from a lighter view of the contract)
        title="Handoff",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        swagger_ui_init_oauth={"clientId": "", "scopes": []},
        swagger_ui_parameters={"persistAuthorization": True},
        # Our own spans and metrics (service.telemetry: no health data, route templates,
        # OTEL_SDK_DISABLED honoured). FastAPI's would duplicate them wherever a global
        # provider is set, and it looks the global providers up on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.rules = build_rules(settings)
    app.state.auth = None
    app.state.client_concurrency = ClientConcurrency(settings.client_concurrency_limit)

    app.include_router(subscriptions.router)  # before /fhir/Subscription/{id} takes "$status"
    app.include_router(fhir_measures.router)  # no stored type: Measure is served, not stored
    app.include_router(fhir_patient_match.router)  # before Patient/{id}: no path is shared
    # FastAPI tries included routers in order (~3 µs each passed over, even with
    # PrefixRouter's early refusal): the busiest first. No two of them share a path.
    for rtype in sorted(SUPPORTED_TYPES, key=_by_traffic):
        app.include_router(
            resource_router(
                rtype,
                tags=[f"FHIR {rtype}"],
                writable=rtype not in app.state.rules.server_written,
            )
        )
    app.include_router(v1_referrals.router)
    app.include_router(v1_appointments.router)
    app.include_router(v1_followups.router)
    app.include_router(v1_custody.router)
    app.include_router(v1_hl7v2.router)
    app.include_router(v1_assessments.router)
    app.include_router(v1_consents.router)
    app.include_router(v1_naloxone.router)
    app.include_router(v1_measures.router)
    app.include_router(v1_directory.router)
    app.include_router(v1_webhooks.router)
    app.include_router(v1_admin_identity.router)
    app.include_router(system.router)
    app.include_router(auth.router)
    app.include_router(health.router)
    dashboard.install(app, settings)  # /dashboard: HTML pages, not in OpenAPI
    install_error_handlers(app)
    app.add_middleware(ContentNegotiationMiddleware)
    app.add_middleware(DashboardSessionMiddleware, settings=settings)  # /dashboard only
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        RequestHeadLimitMiddleware,
        max_url_bytes=settings.max_url_bytes,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(AccessLogMiddleware)
    install_telemetry(app, settings=settings, engine=engine)
    app.add_middleware(CancelOnDisconnectMiddleware)  # outermost: see its docstring
    _install_openapi(app)
    docs.install(app)
    return app


def _install_openapi(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            fhir_component_schemas()
        )
        parameters_without_null(schema)
        parameters_without_nul(schema)
        shared_responses(schema)
        schema["x-tagGroups"] = _tag_groups(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _tag_groups(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Tags grouped for the three audiences (rendered by ReDoc-style viewers)."""
    used = sorted(
        {t for path in schema["paths"].values() for op in path.values() for t in op.get("tags", [])}
    )
    jms = [t for t in used if t.startswith("JMS") or t.startswith("Naloxone")]
    providers = [t for t in used if t.startswith("FHIR ") and t != "FHIR system"]
    admin = [t for t in used if t not in jms and t not in providers]
    return [
        {"name": "Jail management systems (plain JSON)", "tags": jms},
        {"name": "Providers and FHIR clients", "tags": providers},
        {"name": "Integrators and administrators", "tags": admin},
    ]


def app_factory() -> FastAPI:
    """Entry point for uvicorn (``factory=True``): settings from the environment."""
    settings = get_settings()
    configure_logging(settings)
    return create_app(settings)
