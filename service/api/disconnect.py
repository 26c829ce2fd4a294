"""A read whose client has gone away is cancelled, and its database statement with it.

Starlette runs a handler to its end whether or not anyone is still waiting: a search the client
gave up on kept its pooled connection, and PostgreSQL kept running its statement, until the
statement timeout. Here the server's receive channel is watched for ``http.disconnect`` and the
request's task is cancelled when it comes; asyncpg, when the task awaiting a statement is
cancelled, asks the server to cancel the statement.

Reads only (GET, HEAD, POST ``_search``): a write cancelled half way may or may not have
committed, and its client, gone, could not be told which. Only requests still running after a
short grace are watched: a watch costs a task, and most reads are done sooner.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

GRACE_SECONDS = 0.05


def _is_read(scope: Scope) -> bool:
    method = scope.get("method")
    if method in ("GET", "HEAD"):
        return True
    return method == "POST" and str(scope.get("path", "")).endswith("/_search")


def _bodiless(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return False
    return True


class CancelOnDisconnectMiddleware:
    """Add it last (outermost): the layers inside see the cancellation as the handler does
    (the access log records 499, a span ends), and this one ends it quietly, as there is
    nobody to answer."""

    def __init__(self, app: ASGIApp, *, grace: float = GRACE_SECONDS) -> None:
        self.app = app
        self.grace = grace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_read(scope):
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task, receive, send, bodiless=_bodiless(scope))
        timer = asyncio.get_running_loop().call_later(self.grace, watch.due)
        try:
            await self.app(scope, watch.receive, watch.send)
        except asyncio.CancelledError:
            if not watch.cancelled:
                raise
            watch.cancelled = False
            if task.uncancel() > 0:
                raise  # cancelled by someone else too (the server shutting down)
        finally:
            timer.cancel()
            watch.stop()
            if watch.cancelled:  # the handler finished despite the cancellation
                task.uncancel()


class _Watch:
    """The request's side of the server's receive channel. Until the app has had the request
    body, the app reads the channel itself; after it (or from the start for a request without
    a body), once the grace has passed, a watcher task alone reads it, waiting for the
    disconnect, and the app is handed what the watcher read."""

    __slots__ = (
        "_bodiless",
        "_body_done",
        "_due",
        "_gone",
        "_held",
        "_news",
        "_reading",
        "_receive",
        "_send",
        "_task",
        "_watcher",
        "cancelled",
        "finished",
    )

    def __init__(self, task: asyncio.Task[object], receive: Receive, send: Send, *, bodiless: bool):
        self._task = task
        self._receive = receive
        self._send = send
        self._bodiless = bodiless
        self._body_done = False  # the app has had (or the watcher holds) the last body message
        self._reading = False  # the app is inside the server's receive
        self._due = False
        self._watcher: asyncio.Task[None] | None = None
        self._held: Message | None = None  # a bodiless request's empty body, read by the watcher
        self._gone = False
        self._news: asyncio.Event | None = None
        self.cancelled = False  # this watch cancelled the task
        self.finished = False  # the response has been sent whole

    def due(self) -> None:
        self._due = True
        self._start()

    def _start(self) -> None:
        if (
            self._watcher is None
            and self._due
            and not self._reading
            and not self.finished
            and (self._body_done or self._bodiless)
        ):
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
            if message["type"] == "http.request" and not self._body_done:
                self._held, self._body_done = message, True
                self._tell()
        self._gone = True
        self._tell()
        if not self.finished:
            self.cancelled = True
            self._task.cancel()

    def _tell(self) -> None:
        if self._news is not None:
            self._news.set()

    async def receive(self) -> Message:
        if self._watcher is None and not self._body_done:
            self._reading = True
            try:
                message = await self._receive()
            finally:
                self._reading = False
            if message["type"] != "http.request" or not message.get("more_body", False):
                self._body_done = True
            self._start()
            return message
        # The watcher reads the channel (from now on, if the grace has not passed yet).
        self._due = True
        self._start()
        while True:
            if self._held is not None:
                message, self._held = self._held, None
                return message
            if self._gone:
                return {"type": "http.disconnect"}
            self._news = self._news or asyncio.Event()
            await self._news.wait()
            self._news.clear()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
