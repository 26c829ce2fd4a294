"""``handoff dev receiver``: a development endpoint that prints the notifications (FHIR
Subscriptions) and webhook messages (/v1/webhooks) that arrive, and answers 200; given the
webhook's secret, it checks each message's signature (401 when it does not verify). Not for
production."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def describe(body: Any) -> str:
    """One line about a notification Bundle."""
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        params = body["entry"][0]["resource"].get("parameter", [])
        named = {p["name"]: p for p in params}
        kind = named.get("type", {}).get("valueCode")
        sub = named.get("subscription", {}).get("valueReference", {}).get("reference")
        events = []
        for p in params:
            if p["name"] != "notification-event":
                continue
            parts = {q["name"]: q for q in p["part"]}
            number = parts["event-number"]["valueString"]
            focus = parts.get("focus", {}).get("valueReference", {}).get("reference", "-")
            events.append(f"#{number} {focus}")
        text = f"FHIR {kind} from {sub}"
        return text + (": " + ", ".join(events) if events else "")
    if isinstance(body, dict) and isinstance(body.get("data"), dict) and "type" in body:
        data = body["data"]
        about = "withheld" if data.get("withheld") else f"referral {data.get('referral_id')}"
        return f"webhook {body['type']} #{data.get('event_number')} {about}"
    return "unrecognized body"


def serve_receiver(host: str, port: int, *, verbose: bool, secret: str | None = None) -> None:
    signer = Webhook(secret) if secret else None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            line = f"{stamp} POST {self.path}  {describe(parsed)}"
            status = 200
            if signer is not None and "webhook-signature" in self.headers:
                try:
                    signer.verify(body, dict(self.headers.items()))
                    line += "  (signature ok)"
                except WebhookVerificationError as exc:
                    line += f"  (SIGNATURE REFUSED: {exc})"
                    status = 401
            print(line, flush=True)
            if verbose and parsed is not None:
                print(json.dumps(parsed, indent=2), flush=True)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    print(f"Listening on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    finally:
        server.server_close()
