"""``handoff directory import PATH``: load an Open Referral HSDS 3.0 package (see ``importer``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service.features.directory import importer
from service.features.directory.hsds import PackageError
from service.settings import Settings
from service.workflows.rules import RuleSet


def add_parsers(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    prepare_database: Callable[[Settings], None],
) -> None:
    """``prepare_database``: what ``handoff serve`` does first (migrate SQLite, check PG)."""
    directory = sub.add_parser("directory", help="the service directory (HSDS import)")
    commands = directory.add_subparsers(dest="directory_command", required=True)
    run = commands.add_parser(
        "import",
        help="import an Open Referral HSDS 3.0 package (CSV or JSON tables); idempotent",
        description="Import an HSDS 3.0 package: a folder of tables (organizations, services, "
        "locations, service_at_location, addresses, phones, schedules, languages, "
        "taxonomy_terms, attributes) as CSV or JSON arrays, with or without datapackage.json. "
        "Importing again updates what changed and deactivates what the package no longer has.",
    )
    run.add_argument("path", help="the package folder (or its datapackage.json)")
    run.add_argument(
        "--source",
        required=True,
        help="a short name for the publisher (e.g. ohio-211): the records' ids derive from it "
        "and their HSDS ids, so re-importing the same source finds them again",
    )
    owner = run.add_mutually_exclusive_group(required=True)
    owner.add_argument(
        "--owner",
        metavar="Organization/<id>",
        help="the organization the imported records are written for (their creator)",
    )
    owner.add_argument(
        "--as-admin",
        action="store_true",
        help="write the records as the administrator (no creating organization)",
    )
    run.set_defaults(func=lambda args: cmd_import(args, prepare_database))


def cmd_import(args: argparse.Namespace, prepare_database: Callable[[Settings], None]) -> None:
    from service.app import build_rules

    settings = Settings()
    prepare_database(settings)
    err = Console(stderr=True)
    try:
        summary = asyncio.run(_run(args, settings, build_rules(settings), err))
    except PackageError as exc:
        err.print(f"[bold red]Nothing was imported:[/] {len(exc.problems)} problem(s)")
        for problem in exc.problems[:200]:
            err.print(f"  {problem}", markup=False, highlight=False)
        if len(exc.problems) > 200:
            err.print(f"  ... and {len(exc.problems) - 200} more")
        sys.exit(1)
    out = Console(highlight=False)
    for line in summary.lines():
        out.print(line, markup=False)


async def _run(
    args: argparse.Namespace, settings: Settings, rules: RuleSet, err: Console
) -> importer.ImportSummary:
    from service.storage.db import create_engine

    engine = create_engine(settings)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=False) as bar:
            reading = bar.add_task("Reading rows", total=None)
            writing = bar.add_task("Writing records", total=None, visible=False)

            def start_writing(total: int) -> None:
                bar.update(reading, total=bar.tasks[reading].completed)
                bar.update(writing, total=total, visible=True)

            progress = importer.Progress(
                read=lambda n: bar.advance(reading, n),
                start_writing=start_writing,
                written=lambda n: bar.advance(writing, n),
            )
            return await importer.import_package(
                engine,
                settings,
                rules,
                path=Path(args.path),
                source=args.source,
                owner=None if args.as_admin else args.owner,
                progress=progress,
            )
    finally:
        await engine.dispose()
