"""Patient/$merge with R5 semantics, for administrators: two Patients found to be one person.

* the source Patient stays, ``active: false``, with ``link`` ``replaced-by`` the target: a read
  of its id says where the person went;
* the target gets ``link`` ``replaces`` the source, and the source's identifiers (``use:
  old``) so that the jail's ids keep finding the person;
* every record that references the source (the types with a ``patient`` search parameter:
  referrals and their Tasks, custody stays, screenings, consents...) gets a new version
  referencing the target; earlier versions stay in its history, and each write is audited.
  A record's 42 CFR Part 2 labels are its own and go with it; consents move with the person.
AuditEvents are never rewritten: they name the Patient as it was when they were recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, ForbiddenError, InvalidRequestError
from service.features.identity.parameters import parameters_of
from service.search.execute import allow_all, run_search
from service.search.params import BY_TYPE
from service.search.query import parse_search
from service.storage import repository as repo
from service.storage.db import write_transaction
from service.storage.repository import StoredResource
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

# Every type whose records point at a Patient, but AuditEvent (an audit trail is not edited).
REFERRING_TYPES = tuple(
    sorted(
        t
        for t, params in BY_TYPE.items()
        if t != "AuditEvent" and any(p.name == "patient" for p in params)
    )
)


def _reference(param: dict[str, Any]) -> str | None:
    value = param.get("valueReference")
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) and ref.startswith("Patient/") else None


def require_admin(ctx: WorkflowContext) -> None:
    if ctx.principal is not None and not ctx.principal.is_admin:
        raise ForbiddenError("Only an administrator merges Patients")


def parse_parameters(body: Any) -> tuple[str, str, bool]:
    """(source id, target id, preview) from the R5 $merge Parameters."""
    refs: dict[str, str | None] = {}
    preview = False
    for param in parameters_of(body, "$merge"):
        if not isinstance(param, dict):
            continue
        if param.get("name") in ("source-patient", "target-patient"):
            refs[str(param["name"])] = _reference(param)
        elif param.get("name") == "preview":
            preview = param.get("valueBoolean") is True
    source, target = refs.get("source-patient"), refs.get("target-patient")
    if not source or not target:
        raise InvalidRequestError(
            "$merge needs source-patient and target-patient (valueReference Patient/<id>)",
            expression=["Parameters.parameter"],
        )
    if source == target:
        raise BusinessRuleError("source-patient and target-patient are the same Patient")
    return source.removeprefix("Patient/"), target.removeprefix("Patient/"), preview


def _moved(value: Any, source: str, target: str) -> Any:
    """``value`` with every reference to ``source`` pointing at ``target``."""
    if isinstance(value, dict):
        return {
            k: (target if k == "reference" and v == source else _moved(v, source, target))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_moved(v, source, target) for v in value]
    return value


async def _referring(
    conn: AsyncConnection, ctx: WorkflowContext, source: str
) -> list[StoredResource]:
    found: list[StoredResource] = []
    for rtype in REFERRING_TYPES:
        request = parse_search(
            rtype, [("patient", f"Patient/{source}")], strict=True, default_count=500, max_count=500
        )
        while True:
            page = await run_search(conn, request, base_url=ctx.base_url)
            found.extend(m for m in page.matches if m.raw is not None)
            if page.next_page is None:
                break
            request.page = page.next_page
    return found


async def merge(
    ctx: WorkflowContext, source_id: str, target_id: str, *, preview: bool
) -> dict[str, Any]:
    """The R5 output Parameters: ``outcome`` (what was or would be done) and ``result``."""
    require_admin(ctx)
    admin = dataclasses.replace(ctx, access=allow_all, search_access=None, write_access=None)
    async with write_transaction(ctx.engine) as conn:
        source = await wf.read_in(conn, admin, "Patient", source_id, lock=True)
        target = await wf.read_in(conn, admin, "Patient", target_id, lock=True)
        source_body = orjson.loads(source.raw or "{}")
        target_body = orjson.loads(target.raw or "{}")
        if any(
            (link.get("other") or {}).get("reference") == f"Patient/{target_id}"
            and link.get("type") == "replaced-by"
            for link in source_body.get("link", [])
        ):
            return _output(target_body, "already merged into the target", 0)
        if source_body.get("active") is False and any(
            link.get("type") == "replaced-by" for link in source_body.get("link", [])
        ):
            raise BusinessRuleError(f"Patient/{source_id} was already merged into another Patient")
        referring = await _referring(conn, admin, source_id)
        if preview:
            return _output(target_body, "preview: nothing changed", len(referring))
        old = f"Patient/{source_id}"
        new = f"Patient/{target_id}"
        for stored in referring:
            body = orjson.loads(stored.raw or "{}")
            moved = _moved(body, old, new)
            if moved != body:
                locked = await repo.get_current(
                    conn, stored.resource_type, stored.id, for_update=True
                )
                assert locked is not None
                await wf.update_in(
                    conn, admin, stored.resource_type, stored.id, moved, if_match=locked.version_id
                )
        identifiers = list(target_body.get("identifier", []))
        for ident in source_body.get("identifier", []):
            copied = {**ident, "use": "old"}
            if not any(
                i.get("system") == ident.get("system") and i.get("value") == ident.get("value")
                for i in identifiers
            ):
                identifiers.append(copied)
        if identifiers:
            target_body["identifier"] = identifiers
        target_body["link"] = [
            *target_body.get("link", []),
            {"other": {"reference": old}, "type": "replaces"},
        ]
        result = await wf.update_in(
            conn, admin, "Patient", target_id, target_body, if_match=target.version_id
        )
        source_body["active"] = False
        source_body["link"] = [
            *source_body.get("link", []),
            {"other": {"reference": new}, "type": "replaced-by"},
        ]
        await wf.update_in(
            conn, admin, "Patient", source_id, source_body, if_match=source.version_id
        )
        return _output(orjson.loads(result.stored.raw or "{}"), "merged", len(referring))


def _output(target: dict[str, Any], what: str, moved: int) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "outcome",
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "information",
                            "code": "informational",
                            "diagnostics": f"{what}; records referencing the source: {moved}",
                        }
                    ],
                },
            },
            {"name": "result", "resource": target},
        ],
    }
