"""``handoff dev receiver``: it prints what arrives, and with ``--secret`` it refuses a webhook
message whose signature does not verify."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from service.dev_receiver import describe

ROOT = Path(__file__).resolve().parents[2]


def test_describe_names_a_webhook_message() -> None:
    body = {"type": "referral.accepted", "data": {"event_number": 3, "referral_id": "sr-1"}}
    assert describe(body) == "webhook referral.accepted #3 referral sr-1"
    withheld = {"type": "referral.milestone", "data": {"event_number": 4, "withheld": True}}
    assert describe(withheld) == "webhook referral.milestone #4 withheld"
    assert describe([1, 2]) == "unrecognized body"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_receiver_checks_signatures() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "dev",
            "receiver",
            "--port",
            str(port),
            "--secret",
            secret,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/hook"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        body = b'{"type": "referral.accepted", "data": {"event_number": 1, "referral_id": "x"}}'
        at = datetime.now(UTC)
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign("msg_1", at, body),
        }
        assert httpx.post(url, content=body, headers=headers).status_code == 200
        tampered = body.replace(b'"x"', b'"y"')
        assert httpx.post(url, content=tampered, headers=headers).status_code == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "webhook referral.accepted #1 referral x  (signature ok)" in out
    assert "SIGNATURE REFUSED" in out
