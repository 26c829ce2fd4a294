"""Transaction and batch Bundles posted to the FHIR base.

transaction: every entry in one database transaction, all or nothing; ``urn:uuid:`` full URLs
are given their ids first and references to them rewritten, in any order of the entries.
batch: every entry on its own; a failed entry becomes an OperationOutcome in its response.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import InvalidRequestError, Issue, PayloadTooLargeError, ServiceError
from service.fhir.dates import format_instant
from service.fhir.outcome import operation_outcome
from service.fhir.resource import new_id
from service.fhir.validate import json_type_name, validate_resource
from service.storage.db import read_connection, write_transaction
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext
from service.workflows.disclosure import rerendered

T = TypeVar("T")

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class EntryResult:
    status: str
    location: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    resource: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None

    def as_entry(self, base_url: str) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if self.resource is not None:
            if "id" in self.resource and self.resource.get("resourceType") != "Bundle":
                entry["fullUrl"] = (
                    f"{base_url}/{self.resource['resourceType']}/{self.resource['id']}"
                )
            entry["resource"] = self.resource
        response: dict[str, Any] = {"status": self.status}
        for key in ("location", "etag", "last_modified"):
            value = getattr(self, key)
            if value:
                response["lastModified" if key == "last_modified" else key] = value
        if self.outcome is not None:
            response["outcome"] = self.outcome
        entry["response"] = response
        return entry


@dataclass
class _SearchBudget:
    """The resources the searches of one Bundle may still return: together, at most what one
    search page may (HANDOFF_MAX_PAGE_SIZE). Without it a batch of 300 searches of 1000
    resources each answered 300,000 resources (~27 s)."""

    limit: int
    returned: int = 0

    def count_for(self, wanted: int) -> int:
        if self.returned >= self.limit:
            raise self._spent()
        return min(wanted, self.limit - self.returned)

    def spend(self, returned: int, *, cut_short: bool) -> None:
        if cut_short:  # the page would have held more, had the budget allowed
            raise self._spent()
        self.returned += returned

    def _spent(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The searches of one Bundle return at most {self.limit} resources together "
            "(HANDOFF_MAX_PAGE_SIZE), and this one would pass that: ask for fewer with _count, "
            "or search in a request of its own (whose next links page through the rest)"
        )


def _patch_document(resource: Any) -> Any:
    """The JSON Patch a PATCH entry carries: a Binary whose ``data`` is the document, base64."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise InvalidRequestError(
            "A PATCH entry carries its JSON Patch as a Binary resource (data: the patch, base64)"
        )
    data = resource.get("data")
    try:
        return orjson.loads(base64.b64decode(data if isinstance(data, str) else "", validate=True))
    except (binascii.Error, ValueError) as exc:  # orjson's JSONDecodeError is a ValueError
        raise InvalidRequestError(
            "The PATCH entry's Binary.data must be a JSON Patch document in base64 "
            f"({'not base64' if isinstance(exc, binascii.Error) else 'not JSON'})",
            expression=["Binary.data"],
        ) from None


def _entry_error(index: int, text: str) -> InvalidRequestError:
    return InvalidRequestError(text, expression=[f"Bundle.entry[{index}]"])


def _check_bundle(body: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise InvalidRequestError(
            "POST to the FHIR base takes a Bundle of type transaction or batch"
        )
    kind = body.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidRequestError(
            f"Bundle.type must be transaction or batch, not {kind!r}", expression=["Bundle.type"]
        )
    entries = body.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidRequestError("Bundle.entry must be an array", expression=["Bundle.entry"])
    problems = [p for i, entry in enumerate(entries) for p in _entry_problems(i, entry)]
    if problems:
        raise InvalidRequestError(problems[0].diagnostics, issues=problems)
    return kind, entries


# Bundle.entry.request's elements of type string (R4: ifModifiedSince is an instant, which
# JSON also carries as a string; the server does not use it).
_REQUEST_STRINGS = ("ifNoneMatch", "ifModifiedSince", "ifMatch", "ifNoneExist")


def _entry_problems(index: int, entry: Any) -> list[Issue]:
    """What makes entry ``index`` unusable, each naming its element: a malformed entry is the
    client's mistake (400), whatever the type of the value it put where."""
    at = f"Bundle.entry[{index}]"

    def problem(code: str, element: str, text: str) -> Issue:
        return Issue("error", code, f"{at}{element} {text}", (f"{at}{element}",))

    def wrong_type(element: str, expected: str, value: Any) -> Issue:
        return problem("structure", element, f"must be {expected}, not {json_type_name(value)}")

    if not isinstance(entry, dict):
        return [wrong_type("", "an object", entry)]
    problems: list[Issue] = []
    if "fullUrl" in entry and not isinstance(entry["fullUrl"], str):
        problems.append(wrong_type(".fullUrl", "a string (a URI)", entry["fullUrl"]))
    resource = entry.get("resource")
    if "resource" in entry and not isinstance(resource, dict):
        problems.append(wrong_type(".resource", "an object (a FHIR resource)", resource))
    request = entry.get("request")
    if not isinstance(request, dict):
        if request is None:
            problems.append(
                problem("required", ".request", "is required: the method and url of the entry")
            )
        else:
            problems.append(wrong_type(".request", "an object", request))
        return problems
    method = request.get("method")
    if not isinstance(method, str) or method not in _ORDER:
        allowed = "GET, HEAD, POST, PUT, PATCH or DELETE"
        if method is None:
            problems.append(problem("required", ".request.method", f"is required: {allowed}"))
        else:
            shown = repr(method) if isinstance(method, str) else json_type_name(method)
            problems.append(problem("value", ".request.method", f"must be {allowed}, not {shown}"))
    url = request.get("url")
    if url is None or url == "":
        problems.append(problem("required", ".request.url", "is required"))
    elif not isinstance(url, str):
        problems.append(wrong_type(".request.url", "a string (a URL)", url))
    else:
        try:
            urlsplit(url)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            problems.append(problem("value", ".request.url", f"is not a URL ({exc})"))
    for name in _REQUEST_STRINGS:
        if name in request and not isinstance(request[name], str):
            problems.append(wrong_type(f".request.{name}", "a string", request[name]))
    if method in ("POST", "PUT") and resource is None:
        problems.append(problem("required", ".resource", f"is required in a {method} entry"))
    return problems


def _rewrite_refs(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in mapping:
                out[key] = mapping[value]
            else:
                out[key] = _rewrite_refs(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, mapping) for v in node]
    return node


def _split_url(url: str, base_url: str) -> tuple[list[str], str]:
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1 :]
    parts = urlsplit(url)
    return [p for p in parts.path.split("/") if p], parts.query


def _stored_result(stored: Any, status: str, base_url: str, *, location: bool) -> EntryResult:
    return EntryResult(
        status=status,
        location=f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
        if location
        else None,
        etag=f'W/"{stored.version_id}"',
        last_modified=format_instant(stored.last_updated),
        resource=orjson.loads(stored.raw) if stored.raw else None,
    )


async def _run_entry(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    entry: dict[str, Any],
    *,
    validated: bool,
    budget: _SearchBudget,
) -> EntryResult:
    request = entry["request"]
    method = request["method"]
    path, query = _split_url(request["url"], ctx.base_url)
    if method == "POST":
        resource = entry["resource"]
        if not path or path[0] != resource.get("resourceType") or len(path) != 1:
            raise InvalidRequestError(f"POST url {request['url']!r} must be the resource type")
        result = await wf.create_in(
            conn,
            ctx,
            resource,
            if_none_exist=request.get("ifNoneExist"),
            resource_id=entry.get("_assigned_id"),
            validated=validated,
        )
        return _stored_result(
            result.stored,
            "201 Created" if result.created else "200 OK",
            ctx.base_url,
            location=result.created,
        )
    if method == "PUT":
        if len(path) != 2:
            raise InvalidRequestError(f"PUT url {request['url']!r} must be Type/id")
        result = await wf.update_in(
            conn,
            ctx,
            path[0],
            path[1],
            entry["resource"],
            if_match=wf.parse_if_match(request.get("ifMatch"), element="request.ifMatch"),
            validated=validated,
        )
        return _stored_result(
            result.stored,
            "201 Created" if result.created else "200 OK",
            ctx.base_url,
            location=result.created,
        )
    if method == "PATCH":
        if len(path) != 2:
            raise InvalidRequestError(f"PATCH url {request['url']!r} must be Type/id")
        ops = _patch_document(entry.get("resource"))
        result = await wf.patch_in(
            conn,
            ctx,
            path[0],
            path[1],
            ops,
            if_match=wf.parse_if_match(request.get("ifMatch"), element="request.ifMatch"),
        )
        return _stored_result(result.stored, "200 OK", ctx.base_url, location=False)
    if method == "DELETE":
        if len(path) != 2:
            raise InvalidRequestError(f"DELETE url {request['url']!r} must be Type/id")
        await wf.delete_in(conn, ctx, path[0], path[1])
        return EntryResult(status="204 No Content")
    # GET / HEAD: read, vread or search
    if len(path) == 1:
        search = wf.parse_search_params(ctx, path[0], parse_qsl(query), strict=False)
        wanted = search.count
        search.count = budget.count_for(wanted)
        page = await wf.search_in(conn, ctx, search)
        budget.spend(
            len(page.matches), cut_short=search.count < wanted and page.next_page is not None
        )
        bundle_body = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {
                    "fullUrl": f"{ctx.base_url}/{m.resource_type}/{m.id}",
                    "resource": orjson.loads(m.raw or "{}"),
                    "search": {"mode": "match"},
                }
                for m in page.matches
            ],
        }
        return EntryResult(status="200 OK", resource=bundle_body)
    if len(path) == 2:
        stored = await wf.read_in(conn, ctx, path[0], path[1])
        return _stored_result(stored, "200 OK", ctx.base_url, location=False)
    if len(path) == 4 and path[2] == "_history":
        stored = await wf.vread_in(conn, ctx, path[0], path[1], path[3])
        return _stored_result(stored, "200 OK", ctx.base_url, location=False)
    raise InvalidRequestError(f"GET url {request['url']!r} is not supported in a Bundle")


async def process_bundle(
    ctx: WorkflowContext, body: Any, *, idempotency_key: str | None = None
) -> dict[str, Any]:
    idempotency.check_key(idempotency_key)
    _check_size(body, ctx.settings.bundle_max_entries)
    kind, entries = _check_bundle(body)
    if kind == "batch":
        if idempotency_key is not None:
            raise InvalidRequestError(
                "Idempotency-Key applies to a transaction, not to a batch, whose entries commit "
                "one by one: give each POST entry request.ifNoneExist instead",
                expression=["Idempotency-Key"],
            )
        return await _batch(ctx, entries)
    if idempotency_key is None:
        async with write_transaction(ctx.engine) as conn:
            return await _transaction(conn, ctx, entries)

    async def work(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        return 200, await _transaction(conn, ctx, entries)

    # A retry answers with the first response, which names what the transaction wrote.
    done = await idempotency.run_keyed(
        ctx,
        key=idempotency_key,
        fingerprint=idempotency.request_hash({"transaction": body}),
        work=work,
        stored_status=200,
        versions_of=_versions_written,
    )
    if not done.replayed:
        return done.body
    # Never the stored bytes: each resource as the caller may see it now (a consent may
    # have been revoked since the first request).
    again: dict[str, Any] = rerendered(done.body, done.shown)
    return again


def _check_size(body: Any, limit: int) -> None:
    """Refuse a Bundle of more entries than ``limit`` before looking into any of them: its
    entries run one after another on one connection, so their number is its cost."""
    entries = body.get("entry") if isinstance(body, dict) else None
    if not isinstance(entries, list) or len(entries) <= limit:
        return
    split = (
        "split it into several transactions (each is all or nothing on its own)"
        if body.get("type") == "transaction"
        else "split it into several batches"
    )
    raise PayloadTooLargeError(
        f"This Bundle has {len(entries)} entries; the limit is {limit} "
        f"(HANDOFF_BUNDLE_MAX_ENTRIES): {split}",
        expression=["Bundle.entry"],
    )


def _versions_written(response: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(type, id, version) of each entry of a transaction response, from its ``location``:
    what a replay shows again when its response was kept without them (before migration
    0009)."""
    versions = []
    for entry in response.get("entry", []):
        location = str((entry.get("response") or {}).get("location") or "")
        parts = location.rstrip("/").split("/")
        if len(parts) >= 4 and parts[-2] == "_history" and parts[-1].isdigit():
            versions.append((parts[-4], parts[-3], int(parts[-1])))
    return versions


async def _transaction(
    conn: AsyncConnection, ctx: WorkflowContext, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    prepared = [dict(e) for e in entries]
    results: dict[int, EntryResult] = {}
    budget = _SearchBudget(ctx.settings.max_page_size)
    # Give POST entries their ids first (or the id of the resource a conditional create
    # matches), so urn:uuid references resolve whatever the order of the entries.
    mapping: dict[str, str] = {}
    for i, entry in enumerate(prepared):
        if entry["request"]["method"] != "POST":
            continue
        rtype = entry["resource"].get("resourceType", "")
        target_id = new_id()
        condition = entry["request"].get("ifNoneExist")
        if condition:
            wf.check_type(rtype)
            existing = await _positioned(i, wf.conditional_match(conn, ctx, rtype, condition))
            if existing is not None:
                entry["_existing"] = existing
                target_id = existing.id
        entry["_assigned_id"] = target_id
        full = entry.get("fullUrl")
        if isinstance(full, str) and full.startswith("urn:"):
            if full in mapping:
                raise _entry_error(i, f"fullUrl {full} appears twice in the transaction")
            mapping[full] = f"{rtype}/{target_id}"
    problems: list[Issue] = []
    for i, entry in enumerate(prepared):
        if isinstance(entry.get("resource"), dict):
            entry["resource"] = _rewrite_refs(entry["resource"], mapping)
            if entry["request"]["method"] in ("POST", "PUT") and "_existing" not in entry:
                try:
                    validate_resource(entry["resource"])
                except ServiceError as exc:
                    problems.extend(_at_entry(i, exc.issues))
    if problems:
        raise InvalidRequestError(problems[0].diagnostics, issues=problems)
    order = sorted(range(len(prepared)), key=lambda i: _ORDER[prepared[i]["request"]["method"]])
    for i in order:
        entry = prepared[i]
        if "_existing" in entry:
            results[i] = _stored_result(entry["_existing"], "200 OK", ctx.base_url, location=False)
            continue
        entry["request"] = {k: v for k, v in entry["request"].items() if k != "ifNoneExist"}
        results[i] = await _positioned(
            i, _run_entry(conn, ctx, entry, validated=True, budget=budget)
        )
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [results[i].as_entry(ctx.base_url) for i in range(len(prepared))],
    }


def _at_entry(index: int, issues: tuple[Issue, ...]) -> list[Issue]:
    where = f"Bundle.entry[{index}]"
    return [
        Issue(x.severity, x.code, f"entry[{index}]: {x.diagnostics}", (where, *x.expression))
        for x in issues
    ]


async def _positioned(index: int, awaitable: Awaitable[T]) -> T:
    """Await, re-raising a ServiceError with the entry's position in every issue."""
    try:
        return await awaitable
    except ServiceError as exc:
        exc.issues = tuple(_at_entry(index, exc.issues))
        raise


async def _batch(ctx: WorkflowContext, entries: list[dict[str, Any]]) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    budget = _SearchBudget(ctx.settings.max_page_size)
    for entry in entries:
        try:
            if entry["request"]["method"] in ("GET", "HEAD"):
                async with read_connection(ctx.engine) as conn:
                    result = await _run_entry(conn, ctx, entry, validated=False, budget=budget)
            else:
                async with write_transaction(ctx.engine) as conn:
                    result = await _run_entry(conn, ctx, entry, validated=False, budget=budget)
        except ServiceError as exc:
            result = EntryResult(
                status=f"{exc.status}",
                outcome=operation_outcome(list(exc.issues), request_id=ctx.request_id),
            )
        out.append(result.as_entry(ctx.base_url))
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}
