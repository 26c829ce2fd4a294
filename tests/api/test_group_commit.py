"""Group commit of AuditEvents: shared transactions, each caller released only once durable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.settings import Settings
from service.storage import repository as repo
from service.storage.db import driver_connection, read_connection
from service.storage.group_commit import GroupCommitter
from service.storage.repository import NewResource, history_t, index_t
from service.workflows.audit import audit_event, prepare_server_resource
from service.workflows.context import WorkflowContext


def _event(engine: AsyncEngine, n: int) -> NewResource:
    ctx = WorkflowContext(
        engine=engine,
        settings=Settings(_env_file=None),
        base_url="http://t/fhir",
        request_id=f"r{n}",
    )
    body = audit_event(ctx, interaction="read", outcome="0", entities=[])
    return prepare_server_resource(ctx, body)


async def _count(engine: AsyncEngine, ids: list[str]) -> int:
    async with read_connection(engine) as conn:
        found = [await repo.get_current(conn, "AuditEvent", i) for i in ids]
    return sum(1 for f in found if f is not None)


async def test_concurrent_events_share_transactions_and_all_commit(engine: AsyncEngine) -> None:
    committer: GroupCommitter[NewResource] = GroupCommitter(engine, repo.insert_new_resources)
    events = [_event(engine, n) for n in range(40)]
    await asyncio.gather(*(committer.write(e) for e in events))
    ids = [e.stored.id for e in events]
    # Every caller returned after its own row was committed...
    assert await _count(engine, ids) == 40
    # ... in fewer transactions than callers.
    assert committer.items == 40 and committer.batches < 40
    async with read_connection(engine) as conn:
        seqs = (await conn.execute(select(history_t.c.seq).where(history_t.c.id.in_(ids)))).all()
        indexed = (
            await conn.execute(
                select(func.count()).where(
                    index_t.c.resource_id.in_(ids), index_t.c.param == "request-id"
                )
            )
        ).scalar_one()
    assert len({s[0] for s in seqs}) == 40  # each its own position in the change feed
    assert indexed == 40  # and searchable


async def test_a_failed_flush_fails_each_of_its_callers_and_writes_none(
    engine: AsyncEngine,
) -> None:
    async def flush(conn: AsyncConnection, items: Sequence[NewResource]) -> None:
        await repo.insert_new_resources(conn, items)
        if any(i.stored.raw and '"r-bad"' in i.stored.raw for i in items):
            raise RuntimeError("disk full")

    committer: GroupCommitter[NewResource] = GroupCommitter(engine, flush)
    first = _event(engine, 0)
    good = [_event(engine, n) for n in range(1, 6)]
    bad_ctx = WorkflowContext(
        engine=engine, settings=Settings(_env_file=None), base_url="", request_id="r-bad"
    )
    bad = prepare_server_resource(
        bad_ctx, audit_event(bad_ctx, interaction="read", outcome="0", entities=[])
    )
    # ``first`` is taken by a flush of its own; the others queue behind it: the second batch.
    alone = asyncio.ensure_future(committer.write(first))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    results = await asyncio.gather(
        *(committer.write(e) for e in [*good, bad]), return_exceptions=True
    )
    assert await alone is None
    assert committer.batches == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await _count(engine, [first.stored.id]) == 1
    assert await _count(engine, [e.stored.id for e in good]) == 0  # rolled back together
    later = _event(engine, 9)
    await committer.write(later)  # the committer carries on
    assert await _count(engine, [later.stored.id]) == 1


async def test_a_caller_that_goes_away_still_has_its_event_written(engine: AsyncEngine) -> None:
    committer: GroupCommitter[NewResource] = GroupCommitter(engine, repo.insert_new_resources)
    event = _event(engine, 0)
    caller = asyncio.ensure_future(committer.write(event))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert committer._running is not None
    await committer._running
    assert await _count(engine, [event.stored.id]) == 1


def _audit_committer(engine: AsyncEngine) -> GroupCommitter[NewResource]:
    """As ``audit._commit`` makes it: on PostgreSQL, one statement on the driver connection."""
    if engine.dialect.name == "postgresql":
        return GroupCommitter(
            engine, repo.insert_new_resources_on_driver, connection=driver_connection
        )
    return GroupCommitter(engine, repo.insert_new_resources)


async def test_postgresql_batches_are_one_statement_in_autocommit(engine: AsyncEngine) -> None:
    """On PostgreSQL the audit's batch runs on the asyncpg connection with no transaction
    open around it (no BEGIN and COMMIT round trips): the statement is its own transaction."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    seen: list[bool] = []

    async def flush(driver: object, items: Sequence[NewResource]) -> None:
        seen.append(driver.is_in_transaction())  # type: ignore[attr-defined]
        await repo.insert_new_resources_on_driver(driver, items)

    committer: GroupCommitter[NewResource] = GroupCommitter(
        engine, flush, connection=driver_connection
    )
    events = [_event(engine, n) for n in range(6)]
    await asyncio.gather(*(committer.write(e) for e in events))
    assert seen and not any(seen)
    assert await _count(engine, [e.stored.id for e in events]) == 6
    async with read_connection(engine) as conn:
        rows = await conn.execute(
            select(func.count())
            .select_from(index_t)
            .where(index_t.c.resource_id.in_([e.stored.id for e in events]))
        )
        assert rows.scalar_one() == sum(len(e.index) for e in events)


async def test_a_one_statement_batch_that_fails_writes_none_of_it(engine: AsyncEngine) -> None:
    committer = _audit_committer(engine)
    blocker = asyncio.ensure_future(committer.write(_event(engine, 0)))
    await asyncio.sleep(0)
    good = [_event(engine, n) for n in range(1, 4)]
    twice = _event(engine, 4)  # the same version twice in one batch: the batch is rejected
    results = await asyncio.gather(
        *(committer.write(e) for e in [*good, twice, twice]), return_exceptions=True
    )
    await blocker
    assert all(isinstance(r, Exception) for r in results)
    assert await _count(engine, [e.stored.id for e in [*good, twice]]) == 0
