"""``handoff measures rebuild``: recompute every measure fact from the stored resources, against
HANDOFF_DATABASE_URL (after the migration that adds the fact tables, or a definitions change)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from service.settings import Settings


async def _run(args: argparse.Namespace, settings: Settings) -> dict[str, int]:
    from service.features.measures.facts import rebuild
    from service.storage.db import create_engine

    engine = create_engine(settings)
    try:
        return await rebuild(engine, batch=args.batch)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> None:
    print(json.dumps(asyncio.run(_run(args, Settings())), indent=2))  # noqa: T201


def add_parsers(sub: Any) -> None:
    measures = sub.add_parser("measures", help="program measures (facts behind /v1/measures)")
    msub = measures.add_subparsers(dest="measures_command", required=True)
    rebuild = msub.add_parser("rebuild", help="recompute every fact from the stored resources")
    rebuild.add_argument(
        "--batch", type=int, default=200, help="people (or records) per transaction"
    )
    measures.set_defaults(func=run)
