"""Real HTTP receivers on 127.0.0.1 (an ephemeral port each) for notification tests: they
record what arrives and answer as told (a status, a delay)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """``status`` is answered to every POST; ``delay`` seconds are waited first."""

    status: int = 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    arrived: int = 0  # requests whose body was read (answered or not yet)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/notify"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                at = time.monotonic()
                with receiver.lock:
                    receiver.arrived += 1
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), body, at)
                    )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def bundles(self, *, after: float = 0.0) -> list[dict[str, Any]]:
        """The bodies that arrived (after ``after``, a time.monotonic())."""
        with self.lock:
            return [r.json() for r in self.received if r.at > after]

    def of_type(self, kind: str, *, after: float = 0.0) -> list[dict[str, Any]]:
        return [b for b in self.bundles(after=after) if notification_type(b) == kind]


def status_parameter(bundle: dict[str, Any], name: str) -> list[Any]:
    params = bundle["entry"][0]["resource"]["parameter"]
    return [p for p in params if p["name"] == name]


def notification_type(bundle: dict[str, Any]) -> str:
    return str(status_parameter(bundle, "type")[0]["valueCode"])


def event_numbers(bundle: dict[str, Any]) -> list[int]:
    return [
        int(next(p["valueString"] for p in e["part"] if p["name"] == "event-number"))
        for e in status_parameter(bundle, "notification-event")
    ]


def focuses(bundle: dict[str, Any]) -> list[str | None]:
    out: list[str | None] = []
    for e in status_parameter(bundle, "notification-event"):
        ref = next(
            (p["valueReference"]["reference"] for p in e["part"] if p["name"] == "focus"), None
        )
        out.append(ref.split("/fhir/")[-1] if ref else None)
    return out
