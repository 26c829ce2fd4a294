"""``handoff directory import``: an HSDS 3.0 package into the directory, idempotently.

Each HSDS object becomes the FHIR resource whose id derives from the source and its HSDS id
(``hsds.resource_id``), so importing the same package again finds what it wrote before:

- a record whose mapping did not change is left alone (no new version);
- a changed record gets a new version;
- a record of this source that the package no longer has is deactivated (Organization and
  HealthcareService ``active=false``, Location ``status=inactive``), never deleted: referrals
  that name it keep their meaning;
- a HealthcareService keeps the accepting-new-patients flag its provider set (HSDS 3.0 has no
  such field).

The whole import is one transaction: a package with a problem writes nothing, and two imports
of one source never interleave (an advisory lock per source). The records are written on
behalf of ``owner`` (an Organization, recorded as their creator and in their AuditEvents) or
of the administrator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import ServiceError
from service.features.directory.hsds import (
    SOURCE_PATTERN,
    PackageError,
    identifier_system,
    map_package,
    read_package,
)
from service.fhir.service_codes import accepting_of, with_accepting
from service.search.execute import run_search
from service.search.query import parse_search
from service.settings import Settings
from service.storage import repository as repo
from service.storage.db import write_transaction
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet

KINDS = (
    ("Organization", "organization"),
    ("Location", "location"),
    ("HealthcareService", "service"),
)


@dataclass
class ImportSummary:
    source: str
    rows: int = 0
    added: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    deactivated: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [f"HSDS source '{self.source}': {self.rows} rows read"]
        for rtype, _ in KINDS:
            out.append(
                f"  {rtype:<18} {self.added[rtype]:>5} added  {self.updated[rtype]:>5} updated  "
                f"{self.unchanged[rtype]:>5} unchanged  {self.deactivated[rtype]:>5} deactivated"
            )
        return out


@dataclass
class Progress:
    """Callbacks for a progress display: rows read, then records written."""

    read: Callable[[int], None] = lambda _n: None
    start_writing: Callable[[int], None] = lambda _total: None
    written: Callable[[int], None] = lambda _n: None


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("meta", "text")}


def _deactivated(body: dict[str, Any]) -> dict[str, Any] | None:
    """``body`` made inactive, or None if it already is."""
    out = _comparable(body)
    if body["resourceType"] == "Location":
        if out.get("status") == "inactive":
            return None
        out["status"] = "inactive"
    else:
        if out.get("active") is False:
            return None
        out["active"] = False
    return out


async def import_package(
    engine: AsyncEngine,
    settings: Settings,
    rules: RuleSet,
    *,
    path: Path,
    source: str,
    owner: str | None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import the package at ``path`` as ``source``; ``owner``: ``Organization/<id>`` the
    records are written for, None for the administrator. Raises ``PackageError`` (nothing
    written) for a bad package."""
    if not SOURCE_PATTERN.match(source):
        raise PackageError(
            [f"source '{source}': use lowercase letters, digits and hyphens (e.g. ohio-211)"]
        )
    progress = progress or Progress()
    package = read_package(path, progress.read)
    mapped = map_package(package, source)
    if mapped.problems:
        raise PackageError(mapped.problems)
    summary = ImportSummary(source=source, rows=package.row_count)
    ctx = WorkflowContext(
        engine=engine,
        settings=settings,
        base_url="",
        request_id=f"hsds-import-{source}",
        rules=rules,
        on_behalf_of=owner,
    )
    async with write_transaction(engine) as conn:
        await repo.lock_key(conn, f"hsds-import:{source}")
        if owner is not None:
            rtype, _, rid = owner.partition("/")
            if rtype != "Organization" or not await repo.resource_exists(conn, rtype, rid):
                raise PackageError([f"owner {owner}: no such Organization in this database"])
        previous: dict[tuple[str, str], Any] = {}
        for rtype, kind in KINDS:
            request = parse_search(
                rtype,
                [("identifier", f"{identifier_system(source, kind)}|")],
                strict=True,
                default_count=1000,
                max_count=1000,
            )
            while True:
                page = await run_search(conn, request)
                previous.update({(m.resource_type, m.id): m for m in page.matches})
                if not page.next_page:
                    break
                request.page = page.next_page
        gone = [key for key in previous if key not in mapped.resources]
        progress.start_writing(len(mapped.resources) + len(gone))
        for (rtype, rid), body in mapped.resources.items():
            current = await repo.get_current(conn, rtype, rid, for_update=True)
            live = current is not None and not current.deleted and current.raw is not None
            stored = orjson.loads(current.raw) if live and current and current.raw else None
            if rtype == "HealthcareService" and stored is not None:
                body = with_accepting(body, accepting_of(stored))
            if stored is not None and _comparable(stored) == body:
                summary.unchanged[rtype] += 1
            else:
                await _write(conn, ctx, rtype, rid, body, current if live else None)
                (summary.updated if live else summary.added)[rtype] += 1
            progress.written(1)
        for rtype, rid in gone:
            stored_version = previous[(rtype, rid)]
            inactive = _deactivated(orjson.loads(stored_version.raw))
            if inactive is not None:
                await _write(conn, ctx, rtype, rid, inactive, stored_version)
                summary.deactivated[rtype] += 1
            progress.written(1)
    return summary


async def _write(
    conn: Any,
    ctx: WorkflowContext,
    rtype: str,
    rid: str,
    body: dict[str, Any],
    current: repo.StoredResource | None,
) -> None:
    try:
        await wf.update_in(
            conn,
            ctx,
            rtype,
            rid,
            body,
            if_match=current.version_id if current is not None else None,
        )
    except ServiceError as exc:
        ident = (body.get("identifier") or [{}])[0].get("value")
        raise PackageError([f"{rtype} with HSDS id {ident}: {exc}"]) from exc
