"""Whether a client is enabled, without a round trip per request, yet stopped at once when an
administrator disables it.

Every authenticated request asks. Reading ``oauth_client`` each time was a round trip and ~7 %
of a read's CPU. On PostgreSQL each process keeps one connection that LISTENs on
``clients.CLIENT_STATUS_CHANNEL``; ``clients.set_disabled`` NOTIFYs it in the disabling transaction,
so every replica hears of the change when it commits (PostgreSQL delivers notifications at
commit) and forgets what it knew. Answers are remembered only while that listener is up:
while it is down or (re)connecting, and on SQLite, every request reads the row as before.

Two races are closed by a generation counter, bumped by every notification and every change
of the listener's state: an answer read from the database is remembered only if no change was
heard while it was being read (else a disable committed meanwhile could be overwritten by the
older answer). A change made in this process also forgets at once, before its commit, so the
caller's next request cannot see the old answer even before the notification arrives.

The listener checks its connection every ``HEARTBEAT_SECONDS`` (a silently dropped network
path delivers no notifications and no error): at worst a change is heard that much late if the
path to the database drops without a reset, while the database's pooled connections work.
The task and connection end when the engine is disposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage import clients as store
from service.storage.clients import CLIENT_STATUS_CHANNEL
from service.storage.db import read_connection

HEARTBEAT_SECONDS = 5.0
RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)

log = logging.getLogger("handoff.client_status")

_caches: weakref.WeakKeyDictionary[Any, ClientStatus] = weakref.WeakKeyDictionary()


class ClientStatus:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._known: dict[str, bool] = {}
        self._generation = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    @property
    def listening(self) -> bool:
        return self._listening

    async def is_active(self, client_id: str) -> bool:
        if self._listening:
            known = self._known.get(client_id)
            if known is not None:
                return known
        elif self._task is None and self.engine.dialect.name == "postgresql":
            self._task = asyncio.get_running_loop().create_task(self._listen())
        generation = self._generation
        async with read_connection(self.engine) as conn:
            active = await store.is_active(conn, client_id)
        if self._listening and generation == self._generation:
            self._known[client_id] = active
        return active

    def forget(self, client_id: str | None = None) -> None:
        """A change was heard (None: anything may have changed)."""
        self._generation += 1
        if client_id is None:
            self._known.clear()
        else:
            self._known.pop(client_id, None)

    def stop(self) -> None:
        """Synchronous (the engine's dispose event): cancel the listener, drop its socket."""
        self._listening = False
        self.forget()
        task, conn, self._task, self._conn = self._task, self._conn, None, None
        with contextlib.suppress(RuntimeError):  # the event loop may be closed already
            if task is not None:
                task.cancel()
            if conn is not None and not conn.is_closed():
                conn.terminate()

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.forget(payload or None)

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                self._conn = conn = await asyncpg.connect(**_connect_args(self.engine))
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CLIENT_STATUS_CHANNEL, self._heard)
                self.forget()  # nothing read before this instant may be kept
                self._listening = True
                failures = 0
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), HEARTBEAT_SECONDS)
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=HEARTBEAT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down or unreachable: retry
                log.warning("client status listener: %s; reading status per request", exc)
            finally:
                self._listening = False
                self.forget()
                if self._conn is not None and not self._conn.is_closed():
                    self._conn.terminate()
                self._conn = None
            await asyncio.sleep(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])
            failures += 1


def client_status(engine: AsyncEngine) -> ClientStatus:
    """The engine's cache (one per engine and process), stopped when the engine is disposed."""
    cache = _caches.get(engine.sync_engine)
    if cache is None:
        cache = _caches[engine.sync_engine] = ClientStatus(engine)
        event.listen(engine.sync_engine, "engine_disposed", lambda _e: cache.stop())
    return cache


def changed_here(client_id: str) -> None:
    """A change to ``client_id`` made in this process: forget it in every cache at once."""
    for cache in list(_caches.values()):
        cache.forget(client_id)


store.on_local_change(changed_here)


_CONNECT_PARAMS = set(inspect.signature(asyncpg.connect).parameters)


def _connect_args(engine: AsyncEngine) -> dict[str, Any]:
    """asyncpg.connect's arguments for the engine's URL (the listener needs its own socket)."""
    _args, params = engine.dialect.create_connect_args(engine.url)
    return {k: v for k, v in params.items() if k in _CONNECT_PARAMS}
