"""The ``handoff`` command: serve, worker, migrate, dev receiver (and, with auth, clients)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from service.settings import Settings


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


async def _revision(settings: Settings) -> str | None:
    from service.storage.db import create_engine
    from service.storage.migrate import current_revision

    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return await current_revision(conn)
    finally:
        await engine.dispose()


def prepare_database(settings: Settings) -> None:
    """SQLite (or HANDOFF_AUTO_MIGRATE): migrate. PostgreSQL: refuse an unmigrated database."""
    from service.storage.migrate import head_revision, upgrade

    if settings.is_sqlite or settings.auto_migrate:
        upgrade(settings.database_url)
        return
    current = asyncio.run(_revision(settings))
    if current != head_revision():
        sys.exit(
            f"The database at {_redacted(settings.database_url)} is at migration "
            f"{current or 'none'}, not {head_revision()}. Run `handoff migrate` first (or set "
            "HANDOFF_AUTO_MIGRATE=true to migrate at start-up)."
        )


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    if args.demo:
        os.environ["HANDOFF_DEMO"] = "true"
    if args.no_worker:
        os.environ["HANDOFF_SUBSCRIPTION_WORKER"] = "false"
    settings = Settings()
    prepare_database(settings)
    uvicorn.run(
        "service.app:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers if not settings.is_sqlite else 1,
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        timeout_graceful_shutdown=args.graceful_timeout,
        log_level=settings.log_level.lower(),
        access_log=False,
        # What uvicorn's h11 parser (used where httptools is not installed) buffers of a
        # request's head: enough that the app answers the URL and header limits itself.
        h11_max_incomplete_event_size=settings.max_url_bytes + settings.max_header_bytes + 1024,
    )


def cmd_worker(args: argparse.Namespace) -> None:
    """The notification delivery worker on its own (PostgreSQL; any number of replicas)."""
    from service.logging_config import configure_logging

    settings = Settings()
    configure_logging(settings)
    prepare_database(settings)
    asyncio.run(_run_worker(settings, args.health_host, args.health_port))


async def _run_worker(settings: Settings, health_host: str, health_port: int | None) -> None:
    import signal

    from service.app import build_rules
    from service.features.subscriptions.worker import Worker
    from service.storage.db import create_engine

    engine = create_engine(settings)
    worker = Worker(engine, settings, build_rules(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def probe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        ok = worker.healthy()
        status = "200 OK" if ok else "503 Service Unavailable"
        text = b"ok\n" if ok else b"no successful round lately\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(text)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + text
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(probe, health_host, health_port) if health_port else None
    try:
        await worker.run(stop)
    finally:
        await worker.close()
        if server is not None:
            server.close()
        await engine.dispose()


def cmd_receiver(args: argparse.Namespace) -> None:
    from service.dev_receiver import serve_receiver

    serve_receiver(args.host, args.port, verbose=args.verbose, secret=args.secret)


def cmd_migrate(_args: argparse.Namespace) -> None:
    from service.storage.migrate import head_revision, upgrade

    settings = Settings()
    upgrade(settings.database_url)
    print(f"Database {_redacted(settings.database_url)} is at migration {head_revision()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handoff", description="Handoff FHIR service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--demo", action="store_true", help="seed demo organizations and clients")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (PostgreSQL)")
    serve.add_argument(
        "--graceful-timeout", type=int, default=20, help="seconds to finish requests on SIGTERM"
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="do not deliver notifications from this process (run `handoff worker` instead)",
    )
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run the notification delivery worker")
    worker.add_argument("--health-host", default="0.0.0.0", help="address of the probe endpoint")
    worker.add_argument(
        "--health-port", type=int, default=8081, help="port of the probe endpoint (0: none)"
    )
    worker.set_defaults(func=cmd_worker)
    dev = sub.add_parser("dev", help="development tools")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    receiver = dev_sub.add_parser(
        "receiver", help="print the notifications that arrive (development)"
    )
    receiver.add_argument("--host", default="127.0.0.1")
    receiver.add_argument("--port", type=int, default=9000)
    receiver.add_argument("--verbose", action="store_true", help="print each body in full")
    receiver.add_argument(
        "--secret", help="a /v1 webhook's secret (whsec_...): check each message's signature"
    )
    receiver.set_defaults(func=cmd_receiver)
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)
    from service.clients_cli import add_parsers

    add_parsers(sub)
    # handoff directory import (service.directory_cli)
    from service.directory_cli import add_parsers as add_directory_parsers

    add_directory_parsers(sub, prepare_database)
    from service.features.identity.cli import add_parsers as add_identity_parsers

    add_identity_parsers(sub)
    from service.features.measures.cli import add_parsers as add_measures_parsers

    add_measures_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
