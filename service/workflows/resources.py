"""FHIR REST interactions on stored resources: create, read, vread, update, patch, delete,
history and search, with versioning, If-Match, If-None-Exist and the per-type write rules.

The ``*_in`` functions run on the caller's connection and transaction, so transaction Bundles
and the ``/v1`` APIs compose them; the plain functions open their own transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import jsonpatch
import orjson
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.referral import is_referral_task
from service.domain.text import NUL, nul_message, nul_path
from service.errors import (
    BusinessRuleError,
    ConflictError,
    InvalidRequestError,
    Issue,
    MethodNotAllowedError,
    PreconditionFailedError,
    ResourceGoneError,
    ResourceNotFoundError,
    UnsupportedMediaTypeError,
    not_json,
)
from service.fhir import exact_json
from service.fhir.head import head_of
from service.fhir.outcome import short_repr
from service.fhir.primitives import unsigned_int
from service.fhir.r4 import SUPPORTED_TYPES
from service.fhir.resource import ID_RE, new_id, now_ms, stamp
from service.fhir.validate import validate_resource
from service.search.execute import CURRENT_COLS, SearchPage, history_feed, run_search
from service.search.extract import extract_index
from service.search.query import SearchLimits, SearchRequest, parse_search
from service.settings import Settings
from service.storage import repository as repo
from service.storage.db import read_connection, write_transaction
from service.storage.repository import StoredResource
from service.workflows import audit, idempotency
from service.workflows.access import (
    CREATOR_PARAM,
    check_write,
    creator_entries,
    linked_targets,
    require_scope,
    require_scope_on_any,
)
from service.workflows.audit import prepare_server_resource
from service.workflows.consents import discloser_entries
from service.workflows.context import WorkflowContext
from service.workflows.disclosure import (
    REFERRAL_TYPES,
    decide,
    disclose,
    disclose_all,
    is_redacted_copy,
    is_whole,
    merge_through_view,
    search_filter,
)
from service.workflows.rules import WriteEvent, WrittenEvent


@dataclass
class WriteResult:
    stored: StoredResource
    created: bool  # a new resource (201) rather than a new version of one (200)
    issues: list[Issue] = field(default_factory=list)

    @property
    def status(self) -> int:
        return 201 if self.created else 200


def check_type(resource_type: str) -> None:
    if resource_type not in SUPPORTED_TYPES:
        raise ResourceNotFoundError(
            f"Resource type '{resource_type}' is not supported here; see /fhir/metadata"
        )


def check_id(resource_id: str) -> None:
    if not ID_RE.match(resource_id):
        raise InvalidRequestError(
            f"'{resource_id}' is not a valid FHIR id (1-64 letters, digits, '-' or '.')"
        )


def parse_if_match(header: str | None, *, element: str = "If-Match") -> int | None:
    """The version an ``If-Match`` ETag names (``element``: where it came from, for the
    error: the header, or a Bundle entry's ``request.ifMatch``)."""
    if header is None:
        return None
    text = header.strip() if isinstance(header, str) else ""
    if text.startswith("W/"):
        text = text[2:]
    version = unsigned_int(text.strip('"'))
    if version is None:
        raise InvalidRequestError(
            f'{element} must be a version ETag like W/"3", not {short_repr(header)}',
            expression=[element],
        )
    return version


def parse_body(raw: bytes) -> Any:
    if not raw:
        raise InvalidRequestError("The request has no body; send a FHIR resource as JSON")
    try:
        body = exact_json.loads(raw)  # R4 decimals keep their precision (fhir.exact_json)
    except orjson.JSONDecodeError as exc:
        raise not_json(exc.args[0].split(":")[0], exc.pos) from exc
    # JSON can carry U+0000 only escaped, so a body without the escape has none (the cheap test
    # first; the walk says where).
    if b"\\u0000" in raw and (where := nul_path(body)) is not None:
        raise InvalidRequestError(nul_message(where), expression=[where] if where else [])
    return body


def loads(stored: StoredResource) -> dict[str, Any]:
    assert stored.raw is not None
    body: dict[str, Any] = exact_json.loads(stored.raw)
    return body


# --- reads -------------------------------------------------------------------------------------


def _condition_for(
    ctx: WorkflowContext, *, write: bool
) -> Callable[[str], ColumnElement[bool] | None]:
    """What the caller may see (``write``: act on) of a type, on ``resource`` rows."""
    access = (ctx.write_access or ctx.access) if write else ctx.access
    return lambda rtype: access(rtype, CURRENT_COLS)


async def _visible(
    conn: AsyncConnection, ctx: WorkflowContext, rtype: str, rid: str, *, write: bool = False
) -> bool:
    passed = await repo.which_pass(conn, [(rtype, rid)], _condition_for(ctx, write=write))
    return passed.get((rtype, rid), False)


def _not_found(rtype: str, rid: str) -> ResourceNotFoundError:
    return ResourceNotFoundError(f"{rtype}/{rid} is not known to this server")


async def read_in(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    resource_type: str,
    resource_id: str,
    *,
    lock: bool = False,
) -> StoredResource:
    """``lock``: for a read-then-write in a write transaction; the row stays locked, so what
    was read is the version the write replaces, not one a concurrent writer superseded."""
    check_type(resource_type)
    require_scope(ctx.principal, resource_type, "r")
    return await _current(conn, ctx, resource_type, resource_id, write=False, lock=lock)


async def _current(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    resource_type: str,
    resource_id: str,
    *,
    write: bool,
    lock: bool = False,
) -> StoredResource:
    """The live version, if the caller may see it (to read) or act on it (to write): one query
    that fetches the row and tests its visibility; with ``lock``, the row is locked first."""
    if lock:
        # A statement of its own: a locking read that waited for another writer sees the new
        # row but not that writer's index rows (its snapshot is older), so the visibility test
        # in the same statement would fail; the next statement sees both.
        await repo.get_current(conn, resource_type, resource_id, for_update=True)
    access = (ctx.write_access or ctx.access) if write else ctx.access
    allowed = access(resource_type, CURRENT_COLS)
    found = (
        await repo.get_current_checked(conn, resource_type, resource_id, allowed)
        if allowed is not None
        else None
    )
    if found is None or not found[1]:  # unknown, or not visible to this client: both 404
        raise _not_found(resource_type, resource_id)
    stored = found[0]
    if stored.deleted:
        raise ResourceGoneError(
            f"{resource_type}/{resource_id} was deleted (version {stored.version_id})",
            headers={"ETag": f'W/"{stored.version_id}"'},
        )
    return await disclose(conn, ctx, stored)


async def find_by_identifier(
    conn: AsyncConnection, ctx: WorkflowContext, resource_type: str, system: str, value: str
) -> list[StoredResource]:
    """The live resources whose current version has the identifier ``system|value`` and that
    the caller may see (as a search would), for business-key lookups (a JMS's referral id, a
    jail's person id). Found from the identifier's index rows first, then each checked by
    primary key: a few rows whatever the database's statistics say, where the same search as
    a single statement can be planned as a walk over every resource of the type while the
    statistics lag behind a growing type."""
    return await find_by_first_identifier(conn, ctx, resource_type, [(system, value)])


async def find_by_first_identifier(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    resource_type: str,
    identifiers: list[tuple[str, str]],
) -> list[StoredResource]:
    """``find_by_identifier`` for the first of ``identifiers`` (in order of preference) that
    finds anything, with the index rows of all of them fetched in one query."""
    check_type(resource_type)
    access = ctx.search_access or ctx.access
    allowed = access(resource_type, CURRENT_COLS)
    if allowed is None or not identifiers:
        return []
    carried = await repo.versions_with_identifiers(conn, resource_type, identifiers)
    for which in range(len(identifiers)):
        found = []
        seen: set[str] = set()
        for rid, version in [(rid, v) for i, rid, v in carried if i == which]:
            if rid in seen:
                continue
            seen.add(rid)
            current = await repo.get_current_checked(conn, resource_type, rid, allowed)
            if current is None or not current[1]:
                continue
            stored = current[0]
            if stored.deleted or stored.version_id != version:
                continue  # deleted, or the identifier was on an older version only
            found.append(await disclose(conn, ctx, stored))
        if found:
            return found
    return []


def _audit_as(ctx: WorkflowContext, interaction: str, target: str | None = None) -> None:
    notes = ctx.audit_notes
    notes.interaction = notes.interaction or interaction
    if target:
        notes.target = notes.target or target


async def read(ctx: WorkflowContext, resource_type: str, resource_id: str) -> StoredResource:
    _audit_as(ctx, "read", f"{resource_type}/{resource_id}")
    async with read_connection(ctx.engine) as conn:
        return await read_in(conn, ctx, resource_type, resource_id)


async def vread_in(
    conn: AsyncConnection, ctx: WorkflowContext, resource_type: str, resource_id: str, vid: str
) -> StoredResource:
    check_type(resource_type)
    require_scope(ctx.principal, resource_type, "r")
    version = unsigned_int(vid)
    if version is None:  # not a number, or past any version a resource can reach
        raise ResourceNotFoundError(
            f"Version {short_repr(vid)} of {resource_type}/{resource_id} is unknown"
        )
    if not await _visible(conn, ctx, resource_type, resource_id):
        raise _not_found(resource_type, resource_id)
    stored = await repo.get_version(conn, resource_type, resource_id, version)
    if stored is None:
        raise ResourceNotFoundError(f"Version {vid} of {resource_type}/{resource_id} is unknown")
    if stored.deleted:
        raise ResourceGoneError(f"Version {vid} of {resource_type}/{resource_id} is a deletion")
    return await disclose(conn, ctx, stored)


async def vread(
    ctx: WorkflowContext, resource_type: str, resource_id: str, vid: str
) -> StoredResource:
    _audit_as(ctx, "vread", f"{resource_type}/{resource_id}")
    async with read_connection(ctx.engine) as conn:
        return await vread_in(conn, ctx, resource_type, resource_id, vid)


async def instance_history(
    ctx: WorkflowContext,
    resource_type: str,
    resource_id: str,
    *,
    count: int,
    before_version: int | None,
    since: datetime | None,
) -> list[repo.HistoryEntry]:
    check_type(resource_type)
    require_scope(ctx.principal, resource_type, "r")
    _audit_as(ctx, "history-instance", f"{resource_type}/{resource_id}")
    async with read_connection(ctx.engine) as conn:
        if not await _visible(conn, ctx, resource_type, resource_id):
            raise _not_found(resource_type, resource_id)
        entries = await repo.instance_history(
            conn,
            resource_type,
            resource_id,
            before_version=before_version,
            limit=count + 1,
            since=since,
        )
        shown = await disclose_all(conn, ctx, [e.stored for e in entries])
        return [dataclasses.replace(e, stored=s) for e, s in zip(entries, shown, strict=True)]


async def history(
    ctx: WorkflowContext,
    resource_type: str | None,
    *,
    after: tuple[int, int],
    count: int,
    since: datetime | None,
) -> tuple[list[tuple[StoredResource, str]], tuple[int, int] | None]:
    """Type history (``resource_type``) or system history (None): SMART's search permission."""
    if resource_type is not None:
        check_type(resource_type)
        require_scope(ctx.principal, resource_type, "s")
    else:
        require_scope_on_any(ctx.principal, "s")
    _audit_as(ctx, "history-type" if resource_type else "history-system")
    async with read_connection(ctx.engine) as conn:
        versions, nxt = await history_feed(
            conn,
            resource_type=resource_type,
            after=after,
            count=count,
            since=since,
            access=ctx.search_access or ctx.access,
        )
        disclosed = await disclose_all(conn, ctx, [stored for stored, _ in versions])
        return [(s, m) for s, (_, m) in zip(disclosed, versions, strict=True)], nxt


def parse_search_params(
    ctx: WorkflowContext, resource_type: str, params: list[tuple[str, str]], *, strict: bool
) -> SearchRequest:
    check_type(resource_type)
    require_scope(ctx.principal, resource_type, "s")
    for name, value in params:  # the URL is checked at the edge, a POST _search's form is not
        if NUL in name or NUL in value:
            raise InvalidRequestError(nul_message(f"search parameter {name!r}"))
    return parse_search(
        resource_type,
        params,
        strict=strict,
        default_count=ctx.settings.default_page_size,
        max_count=ctx.settings.max_page_size,
        limits=search_limits(ctx.settings),
    )


def search_limits(settings: Settings) -> SearchLimits:
    return SearchLimits(
        max_params=settings.search_max_params,
        max_repeats=settings.search_max_repeats,
        max_values=settings.search_max_values,
        max_includes=settings.search_max_includes,
        max_included=settings.search_max_included,
    )


async def search_in(
    conn: AsyncConnection, ctx: WorkflowContext, request: SearchRequest
) -> SearchPage:
    access = search_filter(ctx, request, ctx.search_access or ctx.access)
    page = await run_search(conn, request, access=access, base_url=ctx.base_url)
    shown = await disclose_all(
        conn, ctx, [*page.matches, *page.included, *(e.stored for e in page.feed)]
    )
    matched, included = len(page.matches), len(page.included)
    page.matches = shown[:matched]
    page.included = shown[matched : matched + included]
    for entry, stored in zip(page.feed, shown[matched + included :], strict=True):
        entry.stored = stored
    return page


async def search_pages(
    conn: AsyncConnection, ctx: WorkflowContext, request: SearchRequest
) -> AsyncIterator[SearchPage]:
    """Every page of ``request`` in turn (``search_in`` each), for workflows that need all the
    matches rather than the first page."""
    while True:
        page = await search_in(conn, ctx, request)
        yield page
        if not page.next_page:
            return
        request.page = page.next_page


async def search(ctx: WorkflowContext, request: SearchRequest) -> SearchPage:
    _audit_as(ctx, "search-type")
    ctx.audit_notes.search = (request.resource_type, request.canonical_params())
    async with read_connection(ctx.engine) as conn:
        return await search_in(conn, ctx, request)


# --- writes ------------------------------------------------------------------------------------


async def _apply_before_rules(event: WriteEvent) -> None:
    for rule in event.ctx.rules.before.get(event.resource_type, ()):
        await rule(event)


async def _apply_after_rules(event: WrittenEvent) -> None:
    for rule in event.ctx.rules.after.get(event.stored.resource_type, ()):
        await rule(event)


async def _store(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    *,
    interaction: str,
    resource_type: str,
    resource_id: str,
    body: dict[str, Any] | None,
    current: StoredResource | None,
) -> StoredResource:
    """Run the rules, stamp the version and write it (history, current row, index)."""
    current_body = loads(current) if current is not None and current.raw else None
    event = WriteEvent(
        conn=conn,
        ctx=ctx,
        interaction=interaction,  # type: ignore[arg-type]
        resource_type=resource_type,
        resource_id=resource_id,
        body=body,
        current=current,
        current_body=current_body,
    )
    await _apply_before_rules(event)
    version = (current.version_id + 1) if current is not None else 1
    old_index = (
        extract_index(current_body, version_id=current.version_id, base_url=ctx.base_url)
        if current is not None and current_body is not None
        else []
    )
    previous_creator = (
        await repo.index_value(conn, resource_type, resource_id, current.version_id, CREATOR_PARAM)
        if current is not None
        else None
    )
    last_updated = now_ms()
    if event.body is not None:
        final = stamp(
            event.body, resource_id=resource_id, version_id=version, last_updated=last_updated
        )
        raw = exact_json.dumps(final).decode()
        index = extract_index(final, version_id=version, base_url=ctx.base_url)
    else:
        # A deletion keeps the index values of the version it ends, so that pollers walking a
        # parameter's rows in commit order (the change feed) see the deletion too.
        final, raw = None, None
        index = (
            extract_index(current_body, version_id=version, base_url=ctx.base_url)
            if current_body is not None
            else []
        )
    check_write(
        ctx.principal,
        action={"create": "c", "delete": "d"}.get(interaction, "u"),  # type: ignore[arg-type]
        resource_type=resource_type,
        body=final,
        new_index=index,
        old_index=old_index,
        creating=current is None or current.deleted,
        owner_maintained=_owner_maintained(ctx, resource_type, current, current_body, final),
    )
    targets = linked_targets(ctx.principal, resource_type, index)
    visible = await repo.which_pass(
        conn, [(t, i) for t, i, _ in targets], _condition_for(ctx, write=True)
    )
    for target_type, target_id, element in targets:
        # Dangling references stay allowed (transactions may create the target later).
        if visible.get((target_type, target_id), True) is False:
            raise BusinessRuleError(
                f"{element} refers to {target_type}/{target_id}, which is not known to this server",
                expression=[element],
            )
    index = [
        *index,
        *creator_entries(
            ctx.organization,
            resource_type=resource_type,
            resource_id=resource_id,
            version_id=version,
            previous_creator=previous_creator,
        ),
    ]
    if resource_type == "Consent":
        index += discloser_entries(
            final,
            writer=ctx.organization,
            privileged=ctx.principal is None or ctx.principal.is_admin,
            resource_id=resource_id,
            version_id=version,
        )
    stored = StoredResource(resource_type, resource_id, version, last_updated, final is None, raw)
    ctx.written.append((resource_type, resource_id, version))
    audit_event = audit.write_event(
        ctx,
        interaction={"update": "update", "patch": "patch"}.get(interaction, interaction),
        stored=stored,
        body=final,
        previous=current_body,
    )
    await repo.write_version(
        conn,
        stored=stored,
        method={"create": "POST", "delete": "DELETE", "patch": "PATCH"}.get(interaction, "PUT"),
        content=final,
        index=index,
        with_new=[prepare_server_resource(ctx, audit_event)] if audit_event is not None else [],
    )
    await _apply_after_rules(
        WrittenEvent(
            conn=conn,
            ctx=ctx,
            interaction=interaction,  # type: ignore[arg-type]
            stored=stored,
            body=final,
            previous_body=current_body,
        )
    )
    return stored


def _owner_maintained(
    ctx: WorkflowContext,
    resource_type: str,
    current: StoredResource | None,
    current_body: dict[str, Any] | None,
    final: dict[str, Any] | None,
) -> bool:
    """Whether this update is one an organization may make to directory data of its own."""
    check = ctx.rules.owner_maintained.get(resource_type)
    if check is None or ctx.organization is None or current is None or current.deleted:
        return False
    return (
        current_body is not None
        and final is not None
        and check(ctx.organization, current_body, final)
    )


def _check_client_writable(ctx: WorkflowContext, resource_type: str) -> None:
    if resource_type in ctx.rules.server_written:
        raise MethodNotAllowedError(
            f"{resource_type} resources are written only by the server; clients may read and "
            "search them",
            allow=["GET"],
        )


async def create_in(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    body: dict[str, Any],
    *,
    if_none_exist: str | None = None,
    resource_id: str | None = None,
    validated: bool = False,
) -> WriteResult:
    """Create a resource (the body's id is ignored, as FHIR requires)."""
    resource_type = body.get("resourceType", "")
    check_type(resource_type)
    _check_client_writable(ctx, resource_type)
    require_scope(ctx.principal, resource_type, "c")
    if not validated:
        validate_resource(body, expected_type=resource_type)
    if if_none_exist:
        existing = await conditional_match(conn, ctx, resource_type, if_none_exist)
        if existing is not None:
            return WriteResult(stored=existing, created=False)
    rid = resource_id or new_id()
    stored = await _store(
        conn,
        ctx,
        interaction="create",
        resource_type=resource_type,
        resource_id=rid,
        body=body,
        current=None,
    )
    # The answer shows what the caller may see of it (its write's AuditEvent names it).
    return WriteResult(stored=await disclose(conn, ctx, stored, record=False), created=True)


async def conditional_match(
    conn: AsyncConnection, ctx: WorkflowContext, resource_type: str, query: str
) -> StoredResource | None:
    """The one resource matching ``If-None-Exist``, None for no match, 412 for several.

    The search runs under a lock on (type, query), so identical concurrent requests queue
    behind each other and the second sees the first one's resource.
    """
    params = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    if not params:
        raise InvalidRequestError(
            "If-None-Exist must hold search parameters, e.g. identifier=http://sys|123",
            expression=["If-None-Exist"],
        )
    blank = [name for name, value in params if value == ""]
    if blank:
        # A search ignores an empty parameter; a condition that ignored one would match
        # resources the client did not mean.
        raise InvalidRequestError(
            f"If-None-Exist parameter '{blank[0]}' has no value; give it one or leave it out",
            expression=["If-None-Exist"],
        )
    request = parse_search_params(ctx, resource_type, params, strict=True)
    if not request.criteria:
        raise InvalidRequestError(
            f"If-None-Exist '{query}' has no search criteria (only result parameters such as "
            "_count), so it would match any resource; name what identifies it, e.g. "
            "identifier=http://sys|123",
            expression=["If-None-Exist"],
        )
    request.count = 2
    await repo.lock_key(conn, f"{resource_type}?{sorted(params)}")
    page = await search_in(conn, ctx, request)
    if len(page.matches) > 1:
        raise PreconditionFailedError(
            f"If-None-Exist '{query}' matches more than one {resource_type}; make the criteria "
            "specific (e.g. a business identifier)",
            expression=["If-None-Exist"],
        )
    return page.matches[0] if page.matches else None


async def create(
    ctx: WorkflowContext,
    body: dict[str, Any],
    *,
    if_none_exist: str | None = None,
    idempotency_key: str | None = None,
) -> WriteResult:
    resource_type = body.get("resourceType", "") if isinstance(body, dict) else ""
    _audit_as(ctx, "create", resource_type or None)
    if isinstance(resource_type, str) and resource_type:
        require_scope(ctx.principal, resource_type, "c")  # before any work on the body
    idempotency.check_key(idempotency_key)
    validate_resource(body, expected_type=resource_type or None)
    check_type(resource_type)
    _check_client_writable(ctx, resource_type)
    if idempotency_key is None:
        async with write_transaction(ctx.engine) as conn:
            return await create_in(conn, ctx, body, if_none_exist=if_none_exist, validated=True)
    return await _create_once(ctx, body, if_none_exist=if_none_exist, key=idempotency_key)


async def _create_once(
    ctx: WorkflowContext, body: dict[str, Any], *, if_none_exist: str | None, key: str
) -> WriteResult:
    """A create under an ``Idempotency-Key``: a retry answers with the version the first
    request created (the key keeps its type, id and version, not a second copy of the body)."""
    made: list[WriteResult] = []

    async def work(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        result = await create_in(conn, ctx, body, if_none_exist=if_none_exist, validated=True)
        made.append(result)
        s = result.stored
        return result.status, {"resourceType": s.resource_type, "id": s.id, "version": s.version_id}

    fingerprint = idempotency.request_hash({"create": body, "ifNoneExist": if_none_exist})
    done = await idempotency.run_keyed(
        ctx,
        key=key,
        fingerprint=fingerprint,
        work=work,
        versions_of=lambda first: [(first["resourceType"], first["id"], first["version"])],
    )
    if not done.replayed:
        return made[0]
    first = done.body
    wanted = (first["resourceType"], first["id"], first["version"])
    shown = [s for s in done.shown if (s.resource_type, s.id, s.version_id) == wanted]
    if not shown:  # history is kept: only a purge by hand could remove it
        raise ResourceGoneError(f"{first['resourceType']}/{first['id']} is no longer held here")
    return WriteResult(stored=shown[0], created=True)


async def update_in(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    resource_type: str,
    resource_id: str,
    body: dict[str, Any],
    *,
    if_match: int | None,
    validated: bool = False,
    interaction: str = "update",
) -> WriteResult:
    check_type(resource_type)
    check_id(resource_id)
    _check_client_writable(ctx, resource_type)
    require_scope(ctx.principal, resource_type, "u")  # SMART: update, and update-as-create
    if "id" not in body:  # R4 3.1.0.4: the body of an update SHALL carry the id
        raise InvalidRequestError(
            f"The resource in a PUT must have an id, equal to the URL's ({resource_id})",
            expression=[f"{resource_type}.id"],
        )
    if body["id"] != resource_id:
        raise InvalidRequestError(
            f"The body's id ({short_repr(body['id'])}) must equal the id in the URL "
            f"({resource_id})",
            expression=[f"{resource_type}.id"],
        )
    if not validated:
        validate_resource(body, expected_type=resource_type)
    current = await repo.get_current(conn, resource_type, resource_id, for_update=True)
    if current is not None and not await _visible(
        conn, ctx, resource_type, resource_id, write=True
    ):
        # Neither updated (the caller may not read it) nor created (the id is taken): the
        # same answer whoever holds it, naming nothing of it.
        raise ConflictError(
            f"{resource_type}/{resource_id} cannot be written by you: the id is not available "
            "to your organization. Create the resource with POST to let the server assign an id",
            expression=[f"{resource_type}.id"],
        )
    if current is not None and current.raw is not None and not current.deleted:
        body = await _through_view(conn, ctx, current, body)
    if current is None or current.deleted:
        if if_match is not None and (current is None or current.version_id != if_match):
            raise PreconditionFailedError(
                f"{resource_type}/{resource_id} has no current version {if_match}",
                expression=["If-Match"],
            )
    else:
        if if_match is None:
            _require_if_match(ctx, current)
        if if_match is not None and if_match != current.version_id:
            raise PreconditionFailedError(
                f"{resource_type}/{resource_id} is at version {current.version_id}, not {if_match}:"
                " read it again, reapply your change and retry",
                expression=["If-Match"],
                headers={"ETag": f'W/"{current.version_id}"'},
            )
    stored = await _store(
        conn,
        ctx,
        interaction=interaction,
        resource_type=resource_type,
        resource_id=resource_id,
        body=body,
        current=current,
    )
    shown = await disclose(conn, ctx, stored, record=False)
    return WriteResult(stored=shown, created=current is None)


def _require_if_match(ctx: WorkflowContext, current: StoredResource) -> None:
    """Types whose records several parties change concurrently (catalogue ``if_match_required``)
    take a change (PUT, PATCH, or either in a Bundle) only against a named version. FHIR R4
    (http.html#concurrency): a server requiring version-aware updates answers 412 to a change
    without If-Match."""
    if current.resource_type in ctx.rules.if_match_required:
        raise PreconditionFailedError(
            f"The If-Match header is required to change a {current.resource_type}: send "
            f'If-Match: W/"{current.version_id}" (its current version, the ETag of a read), so '
            "that concurrent changes are never lost",
            expression=["If-Match"],
            headers={"ETag": f'W/"{current.version_id}"'},
        )


async def _through_view(
    conn: AsyncConnection, ctx: WorkflowContext, current: StoredResource, body: dict[str, Any]
) -> dict[str, Any]:
    """``body`` as a change to ``current``: where the caller is shown ``current`` redacted
    (workflows.disclosure), its changes are applied to the stored version."""
    if current.resource_type not in REFERRAL_TYPES:
        return body
    shown = await disclose(conn, ctx, current, record=False)
    if not is_whole(current, shown):
        return merge_through_view(loads(current), loads(shown), body)
    if is_redacted_copy(body) and ctx.organization is not None:
        # A copy the caller was shown redacted before a consent let it see the whole: what
        # it lacks was withheld then, not removed now.
        stored = loads(current)
        then = decide(stored, ctx.organization, {}).view
        if then is not None:
            return merge_through_view(stored, then, body)
    return body


async def update(
    ctx: WorkflowContext,
    resource_type: str,
    resource_id: str,
    body: Any,
    *,
    if_match: int | None,
) -> WriteResult:
    _audit_as(ctx, "update", f"{resource_type}/{resource_id}")
    require_scope(ctx.principal, resource_type, "u")  # before any work on the body
    validate_resource(body, expected_type=resource_type)
    async with write_transaction(ctx.engine) as conn:
        return await update_in(
            conn, ctx, resource_type, resource_id, body, if_match=if_match, validated=True
        )


async def patch_in(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    resource_type: str,
    resource_id: str,
    operations: Any,
    *,
    if_match: int | None,
) -> WriteResult:
    """JSON Patch (RFC 6902): applied to the current version, then validated like an update."""
    check_type(resource_type)
    require_scope(ctx.principal, resource_type, "u")
    if not isinstance(operations, list):
        raise InvalidRequestError("A JSON Patch body is an array of operations")
    # Locked, then read: a patch sent without If-Match (where the type allows it) applies to
    # whatever version is current when its turn comes, instead of failing on a concurrent
    # update it never saw.
    current = await _current(conn, ctx, resource_type, resource_id, write=True, lock=True)
    if if_match is None:
        _require_if_match(ctx, current)
    try:
        patched = jsonpatch.JsonPatch(operations).apply(loads(current))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise BusinessRuleError(f"The JSON Patch cannot be applied: {exc}") from exc
    except (TypeError, KeyError, ValueError) as exc:
        raise InvalidRequestError(f"The JSON Patch is malformed: {type(exc).__name__}") from exc
    if not isinstance(patched, dict) or patched.get("resourceType") != resource_type:
        raise BusinessRuleError("A patch may not change resourceType")
    if patched.get("id") != resource_id:
        raise BusinessRuleError("A patch may not change the id")
    validate_resource(patched, expected_type=resource_type)
    return await update_in(
        conn,
        ctx,
        resource_type,
        resource_id,
        patched,
        if_match=if_match if if_match is not None else current.version_id,
        validated=True,
        interaction="patch",
    )


async def patch(
    ctx: WorkflowContext,
    resource_type: str,
    resource_id: str,
    operations: Any,
    *,
    if_match: int | None,
) -> WriteResult:
    _audit_as(ctx, "patch", f"{resource_type}/{resource_id}")
    async with write_transaction(ctx.engine) as conn:
        return await patch_in(conn, ctx, resource_type, resource_id, operations, if_match=if_match)


async def delete_in(
    conn: AsyncConnection, ctx: WorkflowContext, resource_type: str, resource_id: str
) -> StoredResource | None:
    """Logical delete: a new version marked deleted. Returns None if it was already deleted."""
    check_type(resource_type)
    _check_client_writable(ctx, resource_type)
    require_scope(ctx.principal, resource_type, "d")
    if resource_type in ctx.rules.undeletable:
        raise MethodNotAllowedError(
            f"{resource_type} resources cannot be deleted"
            + (
                "; revoke a consent by setting its status to inactive"
                if resource_type == "Consent"
                else ""
            ),
            allow=["GET", "PUT", "PATCH"],
        )
    current = await repo.get_current(conn, resource_type, resource_id, for_update=True)
    if current is None or not await _visible(conn, ctx, resource_type, resource_id, write=True):
        raise _not_found(resource_type, resource_id)
    if current.deleted:
        return None
    _refuse_referral_delete(ctx, current)
    return await _store(
        conn,
        ctx,
        interaction="delete",
        resource_type=resource_type,
        resource_id=resource_id,
        body=None,
        current=current,
    )


def _refuse_referral_delete(ctx: WorkflowContext, current: StoredResource) -> None:
    """A referral ends by a move of its state machine, which the other party sees and the
    measures count; a deletion would end it silently. Administrators may still delete (e.g.
    a test record)."""
    if ctx.principal is None or ctx.principal.is_admin or current.raw is None:
        return
    if current.resource_type not in REFERRAL_TYPES:
        return
    body = loads(current)
    if current.resource_type == "Task" and is_referral_task(body):
        raise BusinessRuleError(
            "A referral Task is not deleted: the receiving organization rejects it (status "
            "rejected with statusReason), the referring organization cancels it (status "
            "cancelled) or marks it entered-in-error",
            expression=["Task.status"],
        )
    if current.resource_type == "ServiceRequest" and (
        _is_referral_request(body) or head_of(current.raw).labelled
    ):
        raise BusinessRuleError(
            "A referral ServiceRequest is not deleted: cancel its Task (status cancelled, or "
            "POST /v1/referrals/{id}/cancel) and the ServiceRequest is revoked with it",
            expression=["ServiceRequest.status"],
        )


def _is_referral_request(body: dict[str, Any]) -> bool:
    return any(
        coding.get("code") == "3457005"
        for category in body.get("category", [])
        if isinstance(category, dict)
        for coding in category.get("coding", [])
        if isinstance(coding, dict)
    )


async def delete(
    ctx: WorkflowContext, resource_type: str, resource_id: str
) -> StoredResource | None:
    _audit_as(ctx, "delete", f"{resource_type}/{resource_id}")
    async with write_transaction(ctx.engine) as conn:
        return await delete_in(conn, ctx, resource_type, resource_id)


def require_json_patch(content_type: str) -> None:
    if not content_type.split(";")[0].strip().lower() == "application/json-patch+json":
        raise UnsupportedMediaTypeError(
            "PATCH takes a JSON Patch document with Content-Type application/json-patch+json"
        )
