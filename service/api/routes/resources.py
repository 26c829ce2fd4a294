"""FHIR REST routes for each stored resource type under /fhir.

One explicit set of routes per type (built by ``resource_router``) rather than a catch-all
``/{type}`` route: each operation gets its own OpenAPI entry, operation id and tag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Path, Request
from starlette._utils import get_route_path
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from service.api.deps import AuditedRoute, ContextDep, direct
from service.api.headers import IdempotencyKey
from service.api.responses import fhir_json, prefer_strict, resource_response, version_headers
from service.errors import InvalidRequestError, Issue
from service.fhir import bundle
from service.fhir import summary as summary_rules
from service.fhir.dates import parse_range
from service.fhir.outcome import operation_outcome, short_repr
from service.fhir.primitives import INTEGER_MAX, unsigned_int
from service.search.execute import SearchPage, decode_cursor, encode_cursor
from service.search.query import SearchRequest, parse_elements, parse_summary
from service.storage.repository import StoredResource
from service.workflows import resources as wf

ResourceId = Annotated[str, Path(description="Logical id", pattern=r"^[A-Za-z0-9\-\.]{1,64}$")]
# Documented, not enforced by FastAPI: the update itself explains a malformed ETag better.
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='The version being replaced, as its ETag: W/"3" (required for Task and '
        "ServiceRequest)",
        json_schema_extra={"pattern": r'^(W/)?"[0-9]+"$'},
    ),
]
# RFC 6902: each operation names what it does and where (a JSON Pointer), with the value it
# adds, replaces or tests, or the location it moves or copies from.
# A conditional create's search, as documented: an identifier (system|value) or a logical id.
# The server takes any search parameter of the type; the pattern states the common, portable
# subset that a schema can check without the type's search parameter list.
IF_NONE_EXIST_PATTERN = r"^(identifier=[^\s&|,]+\|[^\s&|,\\]+|_id=[A-Za-z0-9\-.]{1,64})$"
# The whole document ("") is never removed or replaced; no NUL anywhere (nothing stores one).
_POINTER = {"type": "string", "pattern": "^(/([^~/\\x00]|~[01])*)+$"}
JSON_PATCH: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
            "path": _POINTER,
            "from": _POINTER,
            "value": {"$ref": "#/components/schemas/JsonValue"},
        },
        "required": ["op", "path"],
        "anyOf": [
            {"properties": {"op": {"const": "remove"}}},
            {"properties": {"op": {"enum": ["add", "replace", "test"]}}, "required": ["value"]},
            {"properties": {"op": {"enum": ["move", "copy"]}}, "required": ["from"]},
        ],
    },
}

FHIR_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": text,
        "content": {
            "application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}
        },
    }
    for code, text in {
        400: "Malformed request or invalid resource (OperationOutcome lists every problem)",
        401: "Missing, expired or invalid access token",
        403: "The token's scopes or organization do not allow this",
        404: "Unknown resource (or not visible to this client)",
        405: "The interaction is not supported here (e.g. deleting a Consent); see Allow",
        406: "Only application/fhir+json can be produced",
        410: "The resource was deleted",
        412: "If-Match does not match the current version, or a conditional create is ambiguous",
        413: "Body too large",
        414: "The URL is longer than HANDOFF_MAX_URL_BYTES (send a long search as POST _search)",
        415: "Only application/fhir+json (or application/json) bodies are accepted",
        422: "Business rule violated",
        429: "This client has too many requests in progress; retry after Retry-After",
        431: "The headers are larger than HANDOFF_MAX_HEADER_BYTES",
        503: "Database unavailable; retry later",
    }.items()
}


def _resource_body(resource_type: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{resource_type}"}
    return {
        "requestBody": {
            "required": True,
            "description": f"A FHIR R4 {resource_type} (https://hl7.org/fhir/R4/"
            f"{resource_type.lower()}.html)",
            "content": {
                "application/fhir+json": {"schema": schema},
                "application/json": {"schema": schema},
            },
        }
    }


def _created_links(resource_type: str) -> dict[str, Any]:
    """OpenAPI links from a create's answer (a writable type's) to what can be done with the
    new resource: Swagger UI shows them, and API testers (schemathesis) follow them."""
    by_id = {"resource_id": "$response.body#/id"}
    version = {**by_id, "version_id": "$response.body#/meta/versionId"}
    current = {**by_id, "header.If-Match": "$response.header.ETag"}
    return {
        name: {"operationId": f"{operation}_{resource_type}", "parameters": parameters}
        for name, operation, parameters in (
            ("read", "read", by_id),
            ("vread", "vread", version),
            ("history", "history_instance", by_id),
            ("update", "update", current),
            ("patch", "patch", current),
            ("delete", "delete", by_id),
        )
    }


def _ok(resource_type: str, text: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": text,
            "content": {
                "application/fhir+json": {
                    "schema": {"$ref": f"#/components/schemas/{resource_type}"}
                }
            },
        }
    }


_BUNDLE_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A Bundle",
        "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/Bundle"}}},
    }
}


async def _json_body(request: Request) -> Any:
    return wf.parse_body(await request.body())


def _search_links(ctx_base: str, request: SearchRequest, page: SearchPage) -> list[tuple[str, str]]:
    path = request.resource_type
    params = request.canonical_params()
    links = [("self", bundle.link(ctx_base, path, [*params, *_page_param(request)]))]
    if request.cursor is not None:
        if page.next_cursor:
            links.append(
                ("cursor", bundle.link(ctx_base, path, [*params, ("_cursor", page.next_cursor)]))
            )
        if page.next_page:
            links.append(
                ("next", bundle.link(ctx_base, path, [*params, ("_cursor", page.next_page)]))
            )
        return links
    if page.next_page:
        links.append(("next", bundle.link(ctx_base, path, [*params, ("_page", page.next_page)])))
    if page.previous_page:
        links.append(
            ("previous", bundle.link(ctx_base, path, [*params, ("_page", page.previous_page)]))
        )
    return links


def _page_param(request: SearchRequest) -> list[tuple[str, str]]:
    if request.cursor is not None:
        return [("_cursor", request.cursor)]
    return [("_page", request.page)] if request.page else []


def searchset_response(base: str, request: SearchRequest, page: SearchPage) -> Response:
    issues = list(page.issues)
    if request.ignored:
        issues.extend(
            Issue("warning", "not-supported", f"Ignored: {text}") for text in request.ignored
        )
    if request.cursor is not None:
        matches = [f.stored for f in page.feed if not f.stored.deleted]
        stale = {
            (f.stored.resource_type, f.stored.id, f.stored.version_id)
            for f in page.feed
            if not f.matches
        }
        for f in page.feed:
            if f.stored.deleted:
                issues.append(
                    Issue(
                        "information",
                        "deleted",
                        f"{f.stored.resource_type}/{f.stored.id} was deleted "
                        f"(version {f.stored.version_id})",
                        (f"{f.stored.resource_type}/{f.stored.id}",),
                    )
                )
        body = bundle.searchset(
            base_url=base,
            matches=matches,
            included=page.included,
            total=None,
            links=_search_links(base, request, page),
            issues=issues,
            no_longer_matching=stale,
            elements=request.elements,
            summary=request.summary,
        )
        return fhir_json(body)
    body = bundle.searchset(
        base_url=base,
        matches=page.matches,
        included=page.included,
        total=page.total,
        links=_search_links(base, request, page),
        issues=issues,
        elements=request.elements,
        summary=request.summary,
    )
    return fhir_json(body)


def _since(params: list[tuple[str, str]]) -> datetime | None:
    value = next((v for k, v in params if k == "_since"), None)
    if value is None:
        return None
    rng = parse_range(value)
    if rng is None:
        raise InvalidRequestError(f"_since={value} is not a FHIR instant", expression=["_since"])
    return rng[0]


def _count(params: list[tuple[str, str]], default: int, maximum: int) -> int:
    value = next((v for k, v in params if k == "_count"), None)
    if value is None:
        return default
    count = unsigned_int(value)
    if count is None:
        raise InvalidRequestError(
            f"_count must be an integer from 0 to {INTEGER_MAX}, not {short_repr(value)}",
            expression=["_count"],
        )
    return max(1, min(count, maximum))


async def type_history_response(
    ctx: ContextDep, request: Request, resource_type: str | None
) -> Response:
    params = list(request.query_params.multi_items())
    count = _count(params, ctx.settings.default_page_size, ctx.settings.max_page_size)
    since = _since(params)
    page_token = next((v for k, v in params if k == "_page"), None)
    after = decode_cursor(page_token, "_page") if page_token else (-1, -1)
    versions, nxt = await wf.history(ctx, resource_type, after=after, count=count, since=since)
    path = f"{resource_type}/_history" if resource_type else "_history"
    base_params = [(k, v) for k, v in params if k != "_page"]
    links = [("self", bundle.link(ctx.base_url, path, params))]
    if nxt:
        links.append(
            (
                "next",
                bundle.link(ctx.base_url, path, [*base_params, ("_page", encode_cursor(*nxt))]),
            )
        )
    return fhir_json(bundle.history(base_url=ctx.base_url, versions=versions, links=links))


class PrefixRouter(APIRouter):
    """An APIRouter that declines paths outside its prefix in one string test.

    FastAPI tries every included router's routes in turn; with one router per resource type
    that cost ~20 µs per router passed over (most of a read's routing time). Every route here
    starts with the prefix, so a path that does not can match none of them: the answer is the
    same, only found sooner. (Include it without a further prefix, as ``create_app`` does.)
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = get_route_path(scope)
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return Match.NONE, {}
        return super().matches(scope)


def _subset_params(request: Request) -> tuple[list[str], str | None]:
    """``_elements`` and ``_summary`` on read and vread, as on search."""
    query = request.query_params
    summary = query.get("_summary")
    return (
        parse_elements(query.get("_elements", "")),
        None if summary is None else parse_summary(summary, search=False),
    )


def _subsetted(stored: StoredResource, elements: list[str], summary: str | None) -> StoredResource:
    if not elements and summary is None:
        return stored
    raw = summary_rules.subset(stored.raw, stored.resource_type, elements, summary)
    return dataclasses.replace(stored, raw=raw)


def _not_modified(request: Request, stored: StoredResource) -> bool:
    """Conditional read: ``If-None-Match`` names this version, or (without it)
    ``If-Modified-Since`` is not before it (HTTP dates have whole seconds)."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        return inm.strip() == f'W/"{stored.version_id}"'
    ims = request.headers.get("if-modified-since")
    if not ims:
        return False
    try:
        since = parsedate_to_datetime(ims)
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored (RFC 9110 §13.1.3)
    if since.tzinfo is None:
        return False
    return stored.last_updated.replace(microsecond=0) <= since


def resource_router(
    resource_type: str, *, tags: list[str | Enum], writable: bool = True
) -> APIRouter:
    router = PrefixRouter(
        prefix=f"/fhir/{resource_type}", tags=tags, responses=FHIR_ERRORS, route_class=AuditedRoute
    )
    t = resource_type

    @direct
    async def search_type(request: Request, ctx: ContextDep) -> Response:
        params = list(request.query_params.multi_items())
        search = wf.parse_search_params(ctx, t, params, strict=prefer_strict(request))
        page = await wf.search(ctx, search)
        return searchset_response(ctx.base_url, search, page)

    @direct
    async def search_type_post(request: Request, ctx: ContextDep) -> Response:
        raw = (await request.body()).decode("utf-8", errors="replace")
        params = [*request.query_params.multi_items(), *parse_qsl(raw, keep_blank_values=True)]
        search = wf.parse_search_params(ctx, t, params, strict=prefer_strict(request))
        page = await wf.search(ctx, search)
        return searchset_response(ctx.base_url, search, page)

    @direct
    async def history_type(request: Request, ctx: ContextDep) -> Response:
        return await type_history_response(ctx, request, t)

    @direct
    async def read_resource(resource_id: ResourceId, request: Request, ctx: ContextDep) -> Response:
        subset = _subset_params(request)
        stored = await wf.read(ctx, t, resource_id)
        if _not_modified(request, stored):
            return Response(status_code=304, headers=version_headers(stored))
        return resource_response(request, _subsetted(stored, *subset), base_url=ctx.base_url)

    @direct
    async def vread_resource(
        resource_id: ResourceId, version_id: str, request: Request, ctx: ContextDep
    ) -> Response:
        subset = _subset_params(request)
        stored = await wf.vread(ctx, t, resource_id, version_id)
        return resource_response(request, _subsetted(stored, *subset), base_url=ctx.base_url)

    @direct
    async def history_instance(
        resource_id: ResourceId, request: Request, ctx: ContextDep
    ) -> Response:
        params = list(request.query_params.multi_items())
        count = _count(params, ctx.settings.default_page_size, ctx.settings.max_page_size)
        page = next((v for k, v in params if k == "_page"), None)
        before = unsigned_int(page) if page else None
        if page and before is None:
            raise InvalidRequestError(
                "_page is not a valid history page; follow the links the server returned",
                expression=["_page"],
            )
        entries = await wf.instance_history(
            ctx,
            t,
            resource_id,
            count=count,
            before_version=before,
            since=_since(params),
        )
        more = len(entries) > count
        entries = entries[:count]
        path = f"{t}/{resource_id}/_history"
        links = [("self", bundle.link(ctx.base_url, path, params))]
        if more and entries:
            rest = [(k, v) for k, v in params if k != "_page"]
            links.append(
                (
                    "next",
                    bundle.link(
                        ctx.base_url, path, [*rest, ("_page", str(entries[-1].stored.version_id))]
                    ),
                )
            )
        body = bundle.history(
            base_url=ctx.base_url, versions=[(e.stored, e.method) for e in entries], links=links
        )
        return fhir_json(body)

    async def create_resource(
        request: Request,
        ctx: ContextDep,
        if_none_exist: Annotated[
            str | None,
            Header(
                alias="If-None-Exist",
                description="Create only if no resource matches this search: "
                "identifier=https://jail.example.org/booking|B-1 or _id=<id>",
                json_schema_extra={"pattern": IF_NONE_EXIST_PATTERN},
            ),
        ] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        body = await _json_body(request)
        if isinstance(body, dict) and body.get("resourceType") != t:
            from service.fhir.validate import validate_resource

            validate_resource(body, expected_type=t)
        result = await wf.create(
            ctx, body, if_none_exist=if_none_exist, idempotency_key=idempotency_key
        )
        return resource_response(
            request,
            result.stored,
            base_url=ctx.base_url,
            status_code=result.status,
            location=result.created,
        )

    async def update_resource(
        resource_id: ResourceId,
        request: Request,
        ctx: ContextDep,
        if_match: IfMatch = None,
    ) -> Response:
        body = await _json_body(request)
        result = await wf.update(ctx, t, resource_id, body, if_match=wf.parse_if_match(if_match))
        return resource_response(
            request,
            result.stored,
            base_url=ctx.base_url,
            status_code=result.status,
            location=result.created,
        )

    async def patch_resource(
        resource_id: ResourceId,
        request: Request,
        ctx: ContextDep,
        if_match: IfMatch = None,
    ) -> Response:
        wf.require_json_patch(request.headers.get("content-type", ""))
        operations = await _json_body(request)
        result = await wf.patch(
            ctx, t, resource_id, operations, if_match=wf.parse_if_match(if_match)
        )
        return resource_response(request, result.stored, base_url=ctx.base_url)

    @direct
    async def delete_resource(resource_id: ResourceId, ctx: ContextDep) -> Response:
        stored = await wf.delete(ctx, t, resource_id)
        text = f"Deleted {t}/{resource_id}" if stored else f"{t}/{resource_id} was already deleted"
        headers = {"ETag": f'W/"{stored.version_id}"'} if stored else {}
        return fhir_json(
            operation_outcome([Issue("information", "informational", text)]), 200, headers
        )

    def add(
        path: str, endpoint: Callable[..., Any], method: str, name: str, summary: str, **kw: Any
    ) -> None:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            name=f"{name}_{t}",
            operation_id=f"{name}_{t}",
            summary=summary,
            response_class=Response,
            **kw,
        )

    search_doc = (
        f"Search {t} with FHIR R4 search parameters (see /fhir/metadata for the list). "
        "Add `_cursor=start` and follow the `cursor` link to poll for changes without ever "
        "missing one."
    )
    add(
        "",
        search_type,
        "GET",
        "search",
        f"Search {t}",
        description=search_doc,
        responses=_BUNDLE_OK,
    )
    add(
        "/_search",
        search_type_post,
        "POST",
        "search_post",
        f"Search {t} (form POST)",
        responses=_BUNDLE_OK,
    )
    add(
        "/_history",
        history_type,
        "GET",
        "history_type",
        f"History of all {t} resources",
        responses=_BUNDLE_OK,
    )
    add("/{resource_id}", read_resource, "GET", "read", f"Read a {t}", responses=_ok(t, f"The {t}"))
    add(
        "/{resource_id}/_history",
        history_instance,
        "GET",
        "history_instance",
        f"History of one {t}",
        responses=_BUNDLE_OK,
    )
    add(
        "/{resource_id}/_history/{version_id}",
        vread_resource,
        "GET",
        "vread",
        f"Read one version of a {t}",
        responses=_ok(t, f"That version of the {t}"),
    )
    if writable:
        add(
            "",
            create_resource,
            "POST",
            "create",
            f"Create a {t}",
            status_code=201,
            openapi_extra=_resource_body(t),
            responses={
                201: {
                    "description": f"Created; body is the {t} unless Prefer says otherwise",
                    "links": _created_links(t),
                },
                200: {"description": "If-None-Exist matched an existing resource"},
            },
        )
        add(
            "/{resource_id}",
            update_resource,
            "PUT",
            "update",
            f"Update a {t} (new version)",
            openapi_extra=_resource_body(t),
            responses={
                **_ok(t, f"The new version of the {t}"),
                201: {"description": "Created with the client's id"},
            },
        )
        add(
            "/{resource_id}",
            patch_resource,
            "PATCH",
            "patch",
            f"Patch a {t} with JSON Patch",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json-patch+json": {"schema": JSON_PATCH}},
                }
            },
            responses=_ok(t, f"The new version of the {t}"),
        )
        add(
            "/{resource_id}",
            delete_resource,
            "DELETE",
            "delete",
            f"Delete a {t}",
            responses={200: {"description": "Deleted"}},
        )
    return router
