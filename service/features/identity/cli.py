"""``handoff identity-domains set|list|remove``: person-identifier domains from the command
line, against HANDOFF_DATABASE_URL (the same use cases as /v1/admin/identity-domains)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from service.errors import ServiceError
from service.settings import Settings


async def _run(args: argparse.Namespace, settings: Settings) -> Any:
    from service.features.identity import domains
    from service.storage.db import create_engine
    from service.workflows.context import WorkflowContext

    engine = create_engine(settings)
    try:
        ctx = WorkflowContext(engine=engine, settings=settings, base_url="", request_id="cli")
        if args.domains_command == "set":
            return await domains.set_domain(ctx, args.domain, args.organizations)
        if args.domains_command == "remove":
            await domains.remove_domain(ctx, args.domain)
            return {"domain": args.domain, "organizations": []}
        return await domains.list_domains(ctx)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> None:
    try:
        result = asyncio.run(_run(args, Settings()))
    except ServiceError as exc:
        sys.exit(f"error: {exc.diagnostics}")
    print(json.dumps(result, indent=2))  # noqa: T201


def add_parsers(sub: Any) -> None:
    domains = sub.add_parser(
        "identity-domains", help="organizations that share a JMS's person ids (one Patient)"
    )
    dsub = domains.add_subparsers(dest="domains_command", required=True)
    set_p = dsub.add_parser("set", help="the domain holds exactly these organizations")
    set_p.add_argument("domain", help="lower-case letters, digits and hyphens")
    set_p.add_argument("organizations", nargs="+", help="Organization/<id> ...")
    remove = dsub.add_parser("remove", help="dissolve a domain")
    remove.add_argument("domain")
    dsub.add_parser("list", help="list domains and their organizations")
    domains.set_defaults(func=run)
