"""CancelOnDisconnectMiddleware against a scripted server: what it cancels and what it leaves."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from service.api.disconnect import CancelOnDisconnectMiddleware

GRACE = 0.01


class Server:
    """The server's side of one request: the messages ``receive`` hands out, in order (the
    body first, then ``http.disconnect`` when the client hangs up), and what was sent."""

    def __init__(self, *body: bytes) -> None:
        self.channel: asyncio.Queue[Message] = asyncio.Queue()
        for i, chunk in enumerate(body or (b"",)):
            more = i < len(body) - 1
            self.channel.put_nowait({"type": "http.request", "body": chunk, "more_body": more})
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return await self.channel.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def hang_up(self) -> None:
        self.channel.put_nowait({"type": "http.disconnect"})


def scope(method: str = "GET", path: str = "/fhir/Task", body: bytes = b"") -> Scope:
    headers = [(b"content-length", str(len(body)).encode())] if body else []
    return {"type": "http", "method": method, "path": path, "headers": headers}


class Handler:
    """An app that reads the body, then works until told to answer (or is cancelled)."""

    def __init__(self) -> None:
        self.body = b""
        self.working = asyncio.Event()
        self.answer = asyncio.Event()
        self.outcome = "running"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["method"] == "POST":
                while True:
                    message = await receive()
                    self.body += message.get("body", b"")
                    if not message.get("more_body"):
                        break
            self.working.set()
            await self.answer.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})
            self.outcome = "answered"
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise


async def serve(app: Any, request: Scope, server: Server) -> asyncio.Task[None]:
    middleware = CancelOnDisconnectMiddleware(app, grace=GRACE)
    return asyncio.create_task(middleware(request, server.receive, server.send))


async def test_a_read_whose_client_hangs_up_is_cancelled_quietly() -> None:
    handler, server = Handler(), Server()
    task = await serve(handler, scope(), server)
    await handler.working.wait()
    await asyncio.sleep(GRACE * 3)
    server.hang_up()
    await asyncio.wait_for(task, 1)  # ends without raising: nobody to answer
    assert handler.outcome == "cancelled"
    assert server.sent == []
    assert task.cancelling() == 0


async def test_a_hang_up_within_the_grace_is_seen_once_it_passes() -> None:
    handler, server = Handler(), Server()
    server.hang_up()
    task = await serve(handler, scope(), server)
    await asyncio.wait_for(task, 1)
    assert handler.outcome == "cancelled"


async def test_a_search_posted_is_read_whole_then_cancelled() -> None:
    handler, server = Handler(), Server(b"status=requested", b"&owner=x")
    task = await serve(
        handler, scope("POST", "/fhir/Task/_search", b"status=requested&owner=x"), server
    )
    await handler.working.wait()
    assert handler.body == b"status=requested&owner=x"
    await asyncio.sleep(GRACE * 3)
    server.hang_up()
    await asyncio.wait_for(task, 1)
    assert handler.outcome == "cancelled"


async def test_a_write_runs_to_its_end() -> None:
    handler, server = Handler(), Server(b"{}")
    task = await serve(handler, scope("POST", "/fhir/Task", b"{}"), server)
    await handler.working.wait()
    server.hang_up()
    await asyncio.sleep(GRACE * 3)
    handler.answer.set()
    await asyncio.wait_for(task, 1)
    assert handler.outcome == "answered"


async def test_a_read_answered_is_not_cancelled_afterwards() -> None:
    handler, server = Handler(), Server()
    task = await serve(handler, scope(), server)
    await asyncio.sleep(GRACE * 3)  # watched
    handler.answer.set()
    await asyncio.wait_for(task, 1)
    server.hang_up()  # servers report a disconnect once the response is complete
    await asyncio.sleep(GRACE * 3)
    assert handler.outcome == "answered"
    assert [m["type"] for m in server.sent] == ["http.response.start", "http.response.body"]


async def test_the_app_still_gets_the_empty_body_of_a_watched_read() -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(GRACE * 3)  # the watcher has read the channel by now
        got.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    server = Server()
    await asyncio.wait_for(await serve(app, scope(), server), 1)
    assert got == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_a_cancellation_from_elsewhere_goes_through() -> None:
    handler, server = Handler(), Server()
    task = await serve(handler, scope(), server)
    await handler.working.wait()
    await asyncio.sleep(GRACE * 3)
    task.cancel()  # the server shutting down, say
    done, _ = await asyncio.wait([task], timeout=1)
    assert done and task.cancelled()
    assert handler.outcome == "cancelled"
