"""``Idempotency-Key``: a retried request returns the original result, never a second record.

The key is scoped to the client. The first request's response is stored in the same
transaction as its writes; a concurrent duplicate waits on a lock keyed by (client, key) and
then finds that response. Reusing a key for a different request is an error. Responses are
kept ``HANDOFF_IDEMPOTENCY_RETENTION_HOURS`` (they hold patient data); then the key is free.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ConflictError, InvalidRequestError
from service.fhir.resource import now_ms
from service.search.execute import CURRENT_COLS
from service.storage import repository as repo
from service.storage.db import write_transaction
from service.workflows.disclosure import disclose_all, is_whole

if TYPE_CHECKING:
    from service.storage.repository import StoredResource
    from service.workflows.context import WorkflowContext

MAX_KEY_LENGTH = 255
# Share of keyed requests that also delete a batch of expired responses.
PURGE_CHANCE = 0.01


Version = tuple[str, str, int]  # (type, id, version)


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: dict[str, Any]
    shown: list[Version] | None  # None: kept before the response named them (0009)


def request_hash(payload: Any) -> str:
    try:
        text = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # orjson refuses integers past 64 bits, which a JSON body may hold (free-form answers);
        # the rules that read the payload refuse them with a clear message, after this.
        text = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest()


def check_key(key: str | None) -> None:
    if key is not None and not (0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()):
        raise InvalidRequestError(
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters",
            expression=["Idempotency-Key"],
        )


async def begin(
    conn: AsyncConnection,
    *,
    client_id: str,
    key: str | None,
    fingerprint: str,
    retention: timedelta,
) -> Replay | None:
    """Lock the key and return the stored response of an earlier identical request, if any."""
    if key is None:
        return None
    await repo.lock_key(conn, f"idempotency:{client_id}:{key}")
    earlier = await repo.get_idempotent_response(conn, client_id, key)
    if earlier is None:
        return None
    if earlier.created < now_ms() - retention:
        # Kept no longer than promised: the key is free again (and its row makes room for the
        # new response, under the key's lock).
        await repo.delete_idempotent_response(conn, client_id, key)
        return None
    if earlier.request_hash != fingerprint:
        raise BusinessRuleError(
            "This Idempotency-Key was already used for a different request; use a new key for "
            "a new request",
            expression=["Idempotency-Key"],
        )
    shown = (
        None
        if earlier.shown is None
        else [(str(t), str(i), int(v)) for t, i, v in orjson.loads(earlier.shown)]
    )
    return Replay(earlier.status_code, orjson.loads(earlier.body), shown)


async def finish(
    conn: AsyncConnection,
    *,
    client_id: str,
    key: str | None,
    fingerprint: str,
    status_code: int,
    body: dict[str, Any],
    shown: list[Version],
) -> None:
    if key is None:
        return
    await repo.save_idempotent_response(
        conn,
        client_id=client_id,
        key=key,
        request_hash=fingerprint,
        status_code=status_code,
        body=orjson.dumps(body).decode(),
        created=now_ms(),
        shown=orjson.dumps(shown).decode(),
    )


@dataclass(frozen=True)
class Done:
    status_code: int
    body: dict[str, Any]
    replayed: bool  # the stored response of an earlier request; ``work`` did not run
    # A replay: the versions the first response named, as the disclosure policy lets this
    # request see them now (and in its AuditEvent); versions it may no longer see are absent.
    # Empty when ``work`` ran.
    shown: list[StoredResource] = field(default_factory=list)
    # A replay: whether every version the first response named is still shown whole, so its
    # stored body may be sent again as it is.
    unchanged: bool = True


Work = Callable[[AsyncConnection], Awaitable[tuple[int, dict[str, Any]]]]


async def run_once(
    ctx: WorkflowContext, *, key: str | None, fingerprint: str, work: Work
) -> tuple[int, dict[str, Any]]:
    """``run_keyed`` for a create, answered as (status, body). A ``/v1`` response is a view
    built from the records it names: it is sent again only while the caller may still see
    each of them whole (42 CFR Part 2: a consent revoked since must not be replayed past)."""
    done = await run_keyed(ctx, key=key, fingerprint=fingerprint, work=work)
    if done.replayed and not done.unchanged:
        raise ConflictError(
            "This Idempotency-Key's first request succeeded, but what its response showed is no "
            "longer disclosed to you in full; read the records again rather than replaying it",
            expression=["Idempotency-Key"],
        )
    return done.status_code, done.body


async def run_keyed(
    ctx: WorkflowContext,
    *,
    key: str | None,
    fingerprint: str,
    work: Work,
    stored_status: int = 201,
    versions_of: Callable[[dict[str, Any]], list[Version]] | None = None,
) -> Done:
    """``work(conn)`` in one write transaction, at most once per client and key: a retry gets
    the stored response instead. What ``work`` created (``stored_status``: 201, or 200 for a
    transaction Bundle) is stored with its writes, and with the versions it wrote or read.

    A replay discloses those versions again: they are recorded as this request's reads, so its
    AuditEvent names them as the first request's did (42 CFR Part 2: every disclosure).
    ``versions_of`` finds them in a response kept before they were stored with it."""
    assert ctx.principal is not None
    client_id = ctx.principal.client_id
    retention = timedelta(hours=ctx.settings.idempotency_retention_hours)
    async with write_transaction(ctx.engine) as conn:
        replay = await begin(
            conn, client_id=client_id, key=key, fingerprint=fingerprint, retention=retention
        )
        if replay is not None:
            versions = replay.shown
            if versions is None:
                versions = versions_of(replay.body) if versions_of is not None else []
            shown, unchanged = await _show_again(conn, ctx, versions)
            return Done(
                replay.status_code, replay.body, replayed=True, shown=shown, unchanged=unchanged
            )
        status_code, body = await work(conn)
        if status_code == stored_status:
            await finish(
                conn,
                client_id=client_id,
                key=key,
                fingerprint=fingerprint,
                status_code=status_code,
                body=body,
                shown=_named_by(ctx),
            )
        if key is not None and random.random() < PURGE_CHANCE:
            # Expired responses go a batch at a time, by whichever request draws the lot: no
            # background job, and safe with any number of replicas (SKIP LOCKED).
            await repo.purge_idempotent_responses(conn, before=now_ms() - retention)
    return Done(status_code, body, replayed=False)


def _named_by(ctx: WorkflowContext) -> list[Version]:
    """What this request wrote, then what it read, each once."""
    named = [*ctx.written, *((s.resource_type, s.id, s.version_id) for s in ctx.accessed)]
    return list(dict.fromkeys(named))


async def _show_again(
    conn: AsyncConnection, ctx: WorkflowContext, versions: list[Version]
) -> tuple[list[StoredResource], bool]:
    """The versions a replay shows again, through the disclosure policy as it stands now (a
    consent may have been revoked since the first request), recorded as this request's reads;
    and whether each is still shown whole."""
    found = [
        stored
        for rtype, rid, vid in versions
        if (stored := await repo.get_version(conn, rtype, rid, vid)) is not None
    ]
    visible = await repo.which_pass(
        conn,
        sorted({(s.resource_type, s.id) for s in found}),
        lambda rtype: ctx.access(rtype, CURRENT_COLS),
    )
    still = [s for s in found if visible.get((s.resource_type, s.id), False)]
    shown = await disclose_all(conn, ctx, still)
    unchanged = len(still) == len(versions) and all(
        is_whole(s, v) for s, v in zip(still, shown, strict=True)
    )
    return shown, unchanged
