"""SIGTERM (what Kubernetes sends) lets in-flight requests finish and closes the engine.

After a graceful shutdown uvicorn re-raises the signal it caught, so the process ends "killed by
SIGTERM" (exit status 143 in a shell or container), by design, not with 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builders import patient
from tests.cli.test_serve import demo_token, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    db = tmp_path / "handoff.db"
    env = {
        **os.environ,
        "HANDOFF_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "HANDOFF_LOG_LEVEL": "INFO",
        "HANDOFF_DEMO_HISTORY_MONTHS": "0",
        # This checkout's code, whatever the virtualenv's editable install points at.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--demo", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield proc, port, db
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _ended_by_sigterm(proc: subprocess.Popen[bytes]) -> bool:
    return proc.wait(timeout=30) == -signal.SIGTERM


def _log_lines(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    text = proc.stdout.read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON


def _read_response(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_sigterm_lets_an_in_flight_request_finish(
    server: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, db = server
    token = demo_token(f"http://127.0.0.1:{port}")["Authorization"]
    body = json.dumps(patient()).encode()
    head = (
        f"POST /fhir/Patient HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {token}\r\n"
        f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body[:10])
        time.sleep(0.5)  # the handler has started and waits for the rest of the body
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, "the server quit with a request in flight"
        sock.sendall(body[10:])
        response = _read_response(sock)
    assert response.startswith(b"HTTP/1.1 201"), response[:200]
    assert _ended_by_sigterm(proc)

    messages = [line["message"] for line in _log_lines(proc)]
    assert "Waiting for application shutdown." in messages
    assert "Application shutdown complete." in messages
    assert messages[-1].startswith("Finished server process")  # then the re-raised SIGTERM
    # The lifespan disposed of the engine: SQLite folds its write-ahead log back on the last
    # clean close (a killed process, or one that never closes its connections, leaves it).
    assert db.exists()
    assert not Path(f"{db}-wal").exists()


def test_idle_server_shuts_down_promptly_on_sigterm(
    server: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, _port, db = server
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert _ended_by_sigterm(proc)
    assert time.monotonic() - started < 5
    messages = [line["message"] for line in _log_lines(proc)]
    assert "Application shutdown complete." in messages
    assert messages[-1].startswith("Finished server process")
    assert not Path(f"{db}-wal").exists()
