"""System-level FHIR routes: transaction/batch at the base, system history, metadata."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service import __version__
from service.api.deps import AuditedRoute, ContextDep, PublicContextDep, direct
from service.api.headers import IdempotencyKey
from service.api.responses import fhir_json
from service.api.routes.auth import capability_security
from service.api.routes.resources import FHIR_ERRORS, type_history_response
from service.features.subscriptions.spec import PROFILE as SUBSCRIPTION_PROFILE
from service.features.subscriptions.spec import SERVER_CAPABILITY, TOPIC_CAPABILITY_EXTENSION
from service.features.subscriptions.topics import TOPICS
from service.fhir.r4 import SUPPORTED_TYPES
from service.search.params import can_target, params_for
from service.workflows import bundles
from service.workflows import resources as wf
from service.workflows.rules import RuleSet

router = APIRouter(prefix="/fhir", responses=FHIR_ERRORS, route_class=AuditedRoute)

_SEARCH_TYPES = {
    "token": "token",
    "reference": "reference",
    "string": "string",
    "date": "date",
    "uri": "uri",
    "number": "number",
    "special": "special",
}
# Parameters R4 does not define (the directory's; R5 has HealthcareService-communication).
_HANDOFF_PARAMS = {("HealthcareService", "communication"), ("HealthcareService", "eligibility")}


@router.post(
    "",
    tags=["FHIR system"],
    summary="Process a transaction or batch Bundle",
    operation_id="transaction",
    response_class=Response,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {
                    "schema": {
                        "allOf": [
                            {"$ref": "#/components/schemas/Bundle"},
                            {"properties": {"type": {"enum": ["transaction", "batch"]}}},
                        ]
                    }
                }
            },
        }
    },
)
async def transaction(
    request: Request, ctx: ContextDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """A `transaction` Bundle commits every entry or none; a `batch` runs each entry alone.
    `urn:uuid:` fullUrls may be referenced by other entries and get the new ids. An
    `Idempotency-Key` makes a transaction safe to retry (a batch takes `ifNoneExist` per
    entry instead)."""
    body = wf.parse_body(await request.body())
    result = await bundles.process_bundle(ctx, body, idempotency_key=idempotency_key)
    return fhir_json(result)


@router.get(
    "/_history",
    tags=["FHIR system"],
    summary="History of every resource, in commit order",
    operation_id="history_system",
    response_class=Response,
)
@direct
async def history_system(request: Request, ctx: ContextDep) -> Response:
    return await type_history_response(ctx, request, None)


def _subscription_parts(base_url: str) -> dict[str, Any]:
    """The Backport IG's additions to the Subscription entry: its topics (by canonical URL),
    profile and operations."""
    return {
        "extension": [
            {"url": TOPIC_CAPABILITY_EXTENSION, "valueCanonical": url} for url in sorted(TOPICS)
        ],
        "supportedProfile": [SUBSCRIPTION_PROFILE],
        "operation": [
            {
                "name": "status",
                "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
                "backport-subscription-status",
            },
            {
                "name": "events",
                "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
                "backport-subscription-events",
            },
        ],
    }


def capability_statement(
    base_url: str, rules: RuleSet, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    resources = []
    for rtype in SUPPORTED_TYPES:
        writable = rtype not in rules.server_written
        interactions = ["read", "vread", "search-type", "history-instance", "history-type"]
        if writable:
            interactions += ["create", "update", "patch"]
            if rtype not in rules.undeletable:
                interactions.append("delete")
        params = params_for(rtype)
        includes = [
            "*",
            f"{rtype}:*",
            *sorted(f"{rtype}:{p.name}" for p in params.values() if p.kind == "reference"),
        ]
        # What may point at this type: each reference parameter of any type that can name it.
        revincludes = sorted(
            f"{source}:{p.name}"
            for source in SUPPORTED_TYPES
            for p in params_for(source).values()
            if p.kind == "reference" and can_target(p, rtype)
        )
        extra_parts = _subscription_parts(base_url) if rtype == "Subscription" else {}
        resources.append(
            {
                **extra_parts,
                "type": rtype,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
                "interaction": [{"code": c} for c in interactions],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": writable,
                "conditionalCreate": writable,
                "conditionalRead": "full-support",  # If-None-Match and If-Modified-Since
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "searchInclude": includes,
                "searchRevInclude": revincludes,
                "searchParam": [
                    {
                        "name": p.name,
                        "definition": (
                            f"https://handoff.dev/fhir/SearchParameter/{rtype}-{p.name}"
                            if (rtype, p.name) in _HANDOFF_PARAMS
                            else f"http://hl7.org/fhir/SearchParameter/{rtype}-{p.name}"
                            if not p.name.startswith("_")
                            else "http://hl7.org/fhir/SearchParameter/Resource"
                            + p.name.replace("_", "-")
                        ),
                        "type": _SEARCH_TYPES[p.kind],
                    }
                    for p in params.values()
                ],
            }
        )
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-26",
        "publisher": "Handoff",
        "kind": "instance",
        "software": {"name": "Handoff", "version": __version__},
        "implementation": {"description": "Handoff warm-handoff FHIR server", "url": base_url},
        "instantiates": [SERVER_CAPABILITY],
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
            }
        ],
    }
    if extra:
        statement["rest"][0].update(extra)
    return statement


@router.get(
    "/metadata",
    tags=["FHIR system"],
    summary="CapabilityStatement",
    operation_id="metadata",
    response_class=Response,
)
async def metadata(ctx: PublicContextDep) -> Response:
    """What this server supports, generated from its routes, rules and search parameters."""
    root = ctx.base_url.removesuffix("/fhir")
    statement = capability_statement(ctx.base_url, ctx.rules, capability_security(root))
    body = orjson.dumps(statement)
    etag = 'W/"' + hashlib.sha256(body).hexdigest()[:16] + '"'
    return fhir_json(body, headers={"ETag": etag})
