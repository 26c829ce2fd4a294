"""Group commit: many requests' independent inserts share one transaction.

Every read is audited (42 CFR Part 2), and an AuditEvent committed on its own costs a connection
checkout, a transaction, several statements and a commit per request: more than the read itself.
Concurrent requests instead hand their rows to a ``GroupCommitter``; one flush writes everything
that is waiting in a single transaction and wakes each waiter when it has committed (or with the
flush's error). A caller returns only after its own rows are durable, exactly as with a private
transaction, so nothing is lost if the process dies; with no concurrency a flush starts at once
and holds one item, so nothing waits for a timer either.

Nothing is shared between processes: each replica groups its own requests' rows, and what it
writes is plain inserts of new rows, safe beside any number of other replicas.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage.db import write_transaction

T = TypeVar("T")

# Enough to cover every request in flight on a busy replica; bounds one transaction's size.
MAX_BATCH = 256


class GroupCommitter(Generic[T]):
    """Queues items and writes them with ``flush(conn, items)`` in shared transactions, on a
    connection from ``connection(engine)`` (a write transaction unless told otherwise: a
    flush that is one statement can run it in autocommit, its own transaction)."""

    def __init__(
        self,
        engine: AsyncEngine,
        flush: Callable[[Any, Sequence[T]], Awaitable[None]],
        *,
        max_batch: int = MAX_BATCH,
        connection: Callable[[AsyncEngine], AbstractAsyncContextManager[Any]] = write_transaction,
    ) -> None:
        self.engine = engine
        self._flush = flush
        self._connection = connection
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # flushes done (for tests and benchmarks)
        self.items = 0

    async def write(self, item: T) -> None:
        """Returns once ``item`` is committed; raises what the flush raised if it failed."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # an engine reused by another event loop (tests)
            self._loop, self._pending, self._running = loop, [], None
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, done))
        if self._running is None or self._running.done():
            self._running = loop.create_task(self._drain())
        # Shielded: a caller that goes away (client disconnect) does not cancel the flush that
        # writes other callers' rows too; its own row is still written.
        await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            try:
                async with self._connection(self.engine) as conn:
                    await self._flush(conn, [item for item, _ in batch])
            except BaseException as exc:  # handed to every waiter
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                    raise
                continue
            self.batches += 1
            self.items += len(batch)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


_committers: weakref.WeakKeyDictionary[AsyncEngine, dict[str, GroupCommitter[object]]] = (
    weakref.WeakKeyDictionary()
)


def committer_for(
    engine: AsyncEngine,
    name: str,
    flush: Callable[[Any, Sequence[T]], Awaitable[None]],
    *,
    connection: Callable[[AsyncEngine], AbstractAsyncContextManager[Any]] = write_transaction,
) -> GroupCommitter[T]:
    """The engine's committer called ``name`` (one per engine and purpose, made on first use)."""
    by_name = _committers.setdefault(engine, {})
    found = by_name.get(name)
    if found is None:
        found = by_name[name] = GroupCommitter(
            engine,
            flush,  # type: ignore[arg-type]
            connection=connection,
        )
    return found  # type: ignore[return-value]
