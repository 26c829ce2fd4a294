"""Accounting of disclosures (42 CFR 2.24/2.25): the disclosure AuditEvents of one person,
for the organization that registered them."""

from __future__ import annotations

from typing import Any

import orjson

from service.errors import ForbiddenError, InvalidRequestError
from service.search.execute import run_search
from service.search.query import parse_search
from service.storage import repository as repo
from service.storage.db import read_connection
from service.workflows import resources as wf
from service.workflows.audit import SUBTYPE
from service.workflows.context import WorkflowContext


async def list_disclosures(
    ctx: WorkflowContext,
    patient_id: str,
    *,
    newest_first: bool = True,
    count: int = 100,
    page: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Accounting of disclosures (42 CFR 2.24/2.25): who received which of the person's Part 2
    records, when, and under which consent or exception. One page of ``count`` AuditEvents
    (each may list several records), and the token of the next page (None: the last)."""

    async with read_connection(ctx.engine) as conn:
        await wf.read_in(conn, ctx, "Patient", patient_id)  # 404 unless visible
        ctx.accessed.clear()  # the accounting itself is audited as a search, below
        if ctx.principal is not None and not ctx.principal.is_admin:
            # Only the person's custodians (organizations that recorded Part 2 data or consents
            # for them) may list disclosures: here, the caller must have created the Patient.
            creator = await repo.index_value(
                conn,
                "Patient",
                patient_id,
                (await repo.get_current(conn, "Patient", patient_id)).version_id,  # type: ignore[union-attr]
                "_creator-org",
            )
            if creator != ctx.organization:
                raise ForbiddenError(
                    "Only the organization that registered this person can list its disclosures"
                )
        request = parse_search(
            "AuditEvent",
            [
                ("patient", f"Patient/{patient_id}"),
                ("subtype", f"{SUBTYPE}|disclosure"),
                ("_sort", "-date" if newest_first else "date"),
                ("_count", str(count)),
            ],
            strict=True,
            default_count=count,
            max_count=1000,
        )
        request.page = page
        try:
            found = await run_search(conn, request, base_url=ctx.base_url)
        except InvalidRequestError as exc:
            if not any("_page" in issue.expression for issue in exc.issues):
                raise
            # The search names its token _page; this endpoint's parameter is page.
            raise InvalidRequestError(
                "page is not a page of this accounting: follow the next link a page returned",
                expression=["page"],
            ) from exc
    ctx.audit_notes.interaction = "search-type"
    ctx.audit_notes.search = (
        "AuditEvent",
        [("patient", f"Patient/{patient_id}"), ("subtype", "disclosure")],
    )
    rows = []
    for match in found.matches:
        event = orjson.loads(match.raw or "{}")
        recipient = next(
            (
                a["who"].get("reference")
                for a in event.get("agent", [])
                if not a.get("requestor") and "reference" in a.get("who", {})
            ),
            None,
        )
        client = next(
            (
                a["who"].get("identifier", {}).get("value")
                for a in event.get("agent", [])
                if a.get("requestor")
            ),
            None,
        )
        for entity in event.get("entity", []):
            detail = {d.get("type"): d.get("valueString") for d in entity.get("detail", [])}
            if not detail:
                continue
            rows.append(
                {
                    "disclosed_at": event.get("recorded"),
                    "recipient": recipient,
                    "client_id": client,
                    "record": (entity.get("what") or {}).get("reference"),
                    # Why it could be shown: a consent, an emergency, or neither because the
                    # recipient saw only a redacted view (or its own part of the record).
                    "basis": (
                        "consent"
                        if detail.get("consent")
                        else "emergency"
                        if detail.get("exception")
                        else detail.get("basis")
                    ),
                    "consent": detail.get("consent"),
                    "exception": detail.get("exception"),
                    "purpose": ((event.get("purposeOfEvent") or [{}])[0].get("coding") or [{}])[
                        0
                    ].get("code"),
                    "audit_event": f"AuditEvent/{match.id}",
                }
            )
    return rows, found.next_page
