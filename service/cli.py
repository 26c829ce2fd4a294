"""The ``handoff`` command: serve, migrate (and, with auth, clients)."""

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
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)
    from service.clients_cli import add_parsers

    add_parsers(sub)
    from service.features.identity.cli import add_parsers as add_identity_parsers

    add_identity_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
