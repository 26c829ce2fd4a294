"""The single choke point for AuditEvents (IHE Basic Audit Log Patterns shape).

* Every write records one AuditEvent, written with the change (``write_event``: the caller
  stores it in the same statement as the new version).
* Reads, searches and history record one AuditEvent per request after the read, listing every
  resource returned (matches and included) — ``finish_request``, called by the request's
  context dependency; a failed or denied request records its failure the same way.
* Disclosures of 42 CFR Part 2 data to another organization are marked (subtype
  ``disclosure``) with the consent or emergency exception that allowed them: the accounting
  of disclosures (GET /v1/patients/{id}/disclosures) is a search over these.

AuditEvents hold references, codes and search parameter names, never names or answers.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import ServiceError
from service.fhir.dates import format_instant
from service.fhir.head import ResourceHead, head_of, patient_of
from service.fhir.resource import new_id, now_ms, stamp
from service.search.extract import extract_index
from service.search.params import params_for
from service.settings import Settings
from service.storage import repository as repo
from service.storage.db import driver_connection, read_connection
from service.storage.group_commit import committer_for
from service.storage.repository import StoredResource
from service.workflows.access import creator_entries
from service.workflows.consents import consents_by_patient
from service.workflows.context import WorkflowContext

DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
SUBTYPE = "https://handoff.dev/fhir/CodeSystem/audit-subtype"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
REQUEST_ID_SYSTEM = "https://handoff.dev/fhir/sid/request-id"
CLIENT_SYSTEM = "https://handoff.dev/fhir/sid/client-id"
REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"

ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "search-type": "E",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "operation": "E",
}


@dataclasses.dataclass(frozen=True)
class Accessed:
    stored: StoredResource


def _agents(ctx: WorkflowContext) -> list[dict[str, Any]]:
    principal = ctx.principal
    if principal is None:
        return [
            {
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": {"display": "Handoff (server)"},
                "requestor": False,
            }
        ]
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": {"identifier": {"system": CLIENT_SYSTEM, "value": principal.client_id}},
            "requestor": True,
        }
    ]
    if principal.organization:
        agents.append(
            {
                "type": {
                    "coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]
                },
                "who": {"reference": principal.organization},
                "requestor": False,
            }
        )
    return agents


def audit_event(
    ctx: WorkflowContext,
    *,
    interaction: str,
    outcome: str,
    entities: list[dict[str, Any]],
    description: str | None = None,
    disclosure: bool = False,
    query: str | None = None,
) -> dict[str, Any]:
    subtypes = [{"system": INTERACTION, "code": interaction}]
    if disclosure:
        subtypes.append(
            {"system": SUBTYPE, "code": "disclosure", "display": "42 CFR Part 2 disclosure"}
        )
    if ctx.emergency_reason:
        subtypes.append({"system": SUBTYPE, "code": "break-glass", "display": "Emergency access"})
    all_entities = list(entities)
    all_entities.append(
        {
            "what": {
                "identifier": {"system": REQUEST_ID_SYSTEM, "value": ctx.request_id or "none"}
            },
            "type": {"system": BALP_ENTITY, "code": "XrequestId"},
        }
    )
    if query is not None:
        all_entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2"},
                "role": {"system": ENTITY_ROLE, "code": "24", "display": "Query"},
                "query": base64.b64encode(query.encode()).decode(),
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": REST, "code": "rest", "display": "RESTful Operation"},
        "subtype": subtypes,
        "action": ACTIONS.get(interaction, "E"),
        "recorded": format_instant(datetime.now(UTC)),
        "outcome": outcome,
        "purposeOfEvent": [{"coding": [{"system": REASON, "code": ctx.purpose}]}],
        "agent": _agents(ctx),
        "source": {
            "observer": {"display": "Handoff"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                }
            ],
        },
        "entity": all_entities,
    }
    if description:
        event["outcomeDesc"] = description
    return event


def _entity(
    stored: StoredResource, *, detail: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"reference": f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}"},
        "type": {"system": ENTITY_TYPE, "code": "2"},
        "role": {"system": ENTITY_ROLE, "code": "4", "display": "Domain Resource"},
    }
    if detail:
        entity["detail"] = detail
    return entity


def _patient_entity(ref: str) -> dict[str, Any]:
    return {
        "what": {"reference": ref},
        "type": {"system": ENTITY_TYPE, "code": "1"},
        "role": {"system": ENTITY_ROLE, "code": "1", "display": "Patient"},
    }


def prepare_server_resource(ctx: WorkflowContext, body: dict[str, Any]) -> repo.NewResource:
    """A new resource only the server writes (AuditEvent), stamped and indexed: no client
    rules, not audited."""
    rid = new_id()
    last_updated = now_ms()
    final = stamp(body, resource_id=rid, version_id=1, last_updated=last_updated)
    index = extract_index(final, version_id=1, base_url=ctx.base_url)
    index += creator_entries(
        ctx.organization,
        resource_type=final["resourceType"],
        resource_id=rid,
        version_id=1,
        previous_creator=None,
    )
    stored = StoredResource(
        final["resourceType"], rid, 1, last_updated, False, orjson.dumps(final).decode()
    )
    # No JSONB copy of AuditEvents: append-only, read by id and search, never queried by
    # content; a page's AuditEvent (~25 KB) cost PostgreSQL ~0.6 ms to parse and compress.
    return repo.NewResource(stored=stored, content=None, index=index)


async def _commit(engine: AsyncEngine, ctx: WorkflowContext, event: dict[str, Any]) -> None:
    """On its own (reads, failures): committed with other requests' AuditEvents in one shared
    transaction (``group_commit``); returns once this one is durable."""
    # On PostgreSQL a batch is one statement, run on the driver connection in autocommit (its
    # own transaction: no BEGIN and COMMIT, no SQLAlchemy execution around it).
    committer = (
        committer_for(
            engine,
            "audit",
            functools.partial(repo.insert_new_resources_on_driver, engine=engine),
            connection=driver_connection,
        )
        if engine.dialect.name == "postgresql"
        else committer_for(engine, "audit", repo.insert_new_resources)
    )
    await committer.write(prepare_server_resource(ctx, event))


def write_event(
    ctx: WorkflowContext,
    *,
    interaction: str,
    stored: StoredResource,
    body: dict[str, Any] | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """The AuditEvent of a write (None when not audited); the caller stores it with the write,
    so that it commits, or not, with the change."""
    if not ctx.audit or stored.resource_type == "AuditEvent":
        return None
    ctx.audit_notes.written = True
    entities = [_entity(stored)]
    patient = patient_of(body or previous or {})
    if patient:
        entities.append(_patient_entity(patient))
    return audit_event(ctx, interaction=interaction, outcome="0", entities=entities)


def _masked_query(params: list[tuple[str, str]], resource_type: str) -> str:
    """Parameter names, with the values of string parameters (names, addresses) masked."""
    known = params_for(resource_type)
    parts = []
    for name, value in params:
        param = known.get(name.split(":", 1)[0])
        parts.append(f"{name}={'***' if param is not None and param.kind == 'string' else value}")
    return f"{resource_type}?" + "&".join(parts)


async def finish_request(ctx: WorkflowContext, *, error: BaseException | None) -> None:
    """After a request: one AuditEvent for what it read, or for its failure."""
    notes = ctx.audit_notes
    if not ctx.audit or notes.done:
        return
    notes.done = True
    interaction = notes.interaction or "read"
    search = notes.search
    query = _masked_query(search[1], search[0]) if search else None
    if error is not None:
        status = error.status if isinstance(error, ServiceError) else 500
        outcome = "4" if status < 500 else "8"
        text = f"{type(error).__name__} ({status})"
        attempted = notes.target
        failed: list[dict[str, Any]] = (
            [{"what": {"reference": attempted}, "type": {"system": ENTITY_TYPE, "code": "2"}}]
            if attempted
            else []
        )
        await _commit(
            ctx.engine,
            ctx,
            audit_event(
                ctx,
                interaction=interaction,
                outcome=outcome,
                entities=failed,
                description=text,
                query=query,
            ),
        )
        return
    if not ctx.accessed and search is None and notes.written:
        return  # writes only: each already has its AuditEvent, committed with it
    entities: list[dict[str, Any]] = []
    heads = [head_of(s.raw) if s.raw else _NO_HEAD for s in ctx.accessed]
    patients = {head.patient for head in heads if head.patient}
    bases = await _disclosure_bases(ctx, ctx.accessed, heads)
    for stored in ctx.accessed:
        entities.append(_entity(stored, detail=bases.get(_key(stored))))
    disclosure = bool(bases)
    entities.extend(_patient_entity(p) for p in sorted(patients))
    await _commit(
        ctx.engine,
        ctx,
        audit_event(
            ctx,
            interaction=interaction,
            outcome="0",
            entities=entities,
            disclosure=disclosure,
            query=query,
        ),
    )


_NO_HEAD = ResourceHead(patient=None, labelled=False)  # a deleted version: no body


def _key(stored: StoredResource) -> tuple[str, str, int]:
    return (stored.resource_type, stored.id, stored.version_id)


async def _disclosure_bases(
    ctx: WorkflowContext, accessed: list[StoredResource], heads: list[ResourceHead]
) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    """The labelled (Part 2) records among ``accessed`` that another organization recorded,
    each with the basis of its disclosure to the caller: the emergency, the consent, or that
    the caller saw only its own part or a redacted view (referrals: as workflows.disclosure
    decided when it answered). Two or three queries for a page, whatever its size; no
    connection at all when nothing is labelled."""
    org = ctx.organization
    labelled = [
        (stored, head)
        for stored, head in zip(accessed, heads, strict=True)
        if org and head.labelled
    ]
    if not labelled or org is None:
        return {}
    async with read_connection(ctx.engine) as conn:
        creators: dict[tuple[str, str, int], str | None] = {}
        for rtype in sorted({stored.resource_type for stored, _ in labelled}):
            versions = [(s.id, s.version_id) for s, _ in labelled if s.resource_type == rtype]
            found = await repo.index_values(conn, rtype, versions, "_creator-org")
            creators.update({(rtype, rid, vid): value for (rid, vid), value in found.items()})
        decided = ctx.disclosure_bases
        disclosed = [
            (s, head)
            for s, head in labelled
            if creators.get(_key(s)) != org or decided.get(_key(s), "author") != "author"
        ]
        consents: dict[str, dict[str, str]] = {}
        wanted = {h.patient for s, h in disclosed if h.patient and _key(s) not in decided}
        if wanted and not ctx.emergency_reason:
            consents = await consents_by_patient(conn, wanted, org, ctx.purpose)
    bases: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for stored, head in disclosed:
        key = _key(stored)
        by_discloser = consents.get(head.patient or "", {})
        creator = creators.get(key)
        if ctx.emergency_reason:
            basis = {
                "type": "exception",
                "valueString": f"medical-emergency: {ctx.emergency_reason}",
            }
        elif key in decided:
            decision = decided[key]
            kind = "consent" if decision.startswith("consent ") else "basis"
            basis = {"type": kind, "valueString": decision.removeprefix("consent ")}
        elif creator is not None and creator in by_discloser:
            basis = {"type": "consent", "valueString": f"Consent/{by_discloser[creator]}"}
        else:
            basis = {"type": "basis", "valueString": "author or redacted view"}
        bases[key] = [basis]
    return bases


async def record_unauthenticated(
    engine: Any, *, request_id: str, path: str, status: int, reason: str
) -> None:
    """A request refused before we knew who was calling (401/403 from the token check)."""
    ctx = WorkflowContext(
        engine=engine, settings=Settings(_env_file=None), base_url="", request_id=request_id
    )
    ctx.audit_notes.interaction = "operation"
    event = audit_event(
        ctx,
        interaction="operation",
        outcome="4",
        entities=[],
        description=f"{reason} ({status}) on {path.split('?', 1)[0]}",
    )
    event["agent"] = [{"who": {"display": "unauthenticated client"}, "requestor": True}]
    await _commit(engine, ctx, event)
