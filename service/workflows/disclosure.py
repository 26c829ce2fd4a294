"""The disclosure policy (42 CFR Part 2): what a caller is shown of each stored version.

Every path that returns resource content asks this module at the moment of answering: reads,
vreads, histories, search matches and includes, write responses, transaction and batch
entries, ``/v1`` views and timelines, and idempotency replays (re-rendered here, never
replayed from stored bytes). Whether a version is *visible* at all is the SQL condition of
``workflows.access`` (tenancy, scopes, and ``consents.part2_condition`` for labelled patient
data, which is all or nothing); this module decides which *view* of a visible labelled
referral the caller gets, and the basis of the disclosure that goes into the AuditEvent.

A labelled referral holds records of two programs, and each part is its author's:

* the ServiceRequest, and a Task's description, input and the reasons of the requester's
  moves (cancelled, entered-in-error), are the referring organization's (the requester);
* a Task's progress (the exact status, businessStatus, output, executionPeriod and the reasons
  of the owner's moves: rejected, on-hold, failed) is the receiving organization's (the owner);
* each note is its author's (``Annotation.authorReference``, stamped by the server on write);
* an Appointment booked for the referral is wholly its creator's (the receiving organization):
  without its consent the others see only that one is scheduled (or cancelled).

A part goes to its author, and to anyone else only under an active consent of the patient
recorded by that author (``consents._permitting``: the discloser holds the consent). Without
one the caller gets a redacted view, marked with the REDACTED tag; redaction protects a record
from those who may not see it, never from its author. Administrators and the medical-emergency
exception (break the glass) see every version whole, audited.

Writes pass through the same views: a party that may change its own elements of a referral it
sees redacted sends its view back changed; ``merge_through_view`` applies exactly the changes
to the stored version, so no withheld value enters, leaves, or is copied by the write, and no
redaction artifact is ever stored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, not_, or_
from sqlalchemy.ext.asyncio import AsyncConnection

from service.fhir import catalogue
from service.fhir.head import head_of, patient_of
from service.search.conditions import version_has
from service.search.execute import AccessFilter, RowCols
from service.search.query import SearchRequest
from service.storage.repository import (
    StoredResource,
    aliased,
    index_t,
    index_values,
    values_up_to,
)
from service.workflows.access import ACTOR_PARAM, CREATOR_PARAM, index_has
from service.workflows.consents import consent_exists, consents_by_patient
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet, WriteEvent

REDACTED_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "REDACTED",
    "display": "redacted",
}
WITHHELD = "Details withheld under 42 CFR Part 2: no active consent names your organization"
REFERRAL_TYPES = catalogue.names(part2="referral")

# Moves of the referral Task's requester (domain.referral): the reason given with them is the
# requester's; every other status's reason is the owner's.
_REQUESTER_STATES = frozenset({"draft", "requested", "cancelled", "entered-in-error"})
# The owner's exact progress as the requester may see it without consent.
_COARSE = {"in-progress": "accepted", "on-hold": "accepted", "failed": "completed"}
# Where the owner's reason is withheld, the requester still learns that there is one.
_REASON_NOTED = frozenset({"rejected", "failed", "on-hold"})
_TASK_REQUESTER_PART = ("description", "input")
_TASK_OWNER_PART = ("businessStatus", "output", "executionPeriod")
_SR_REQUESTER_PART = (
    "code",
    "orderDetail",
    "reasonCode",
    "reasonReference",
    "supportingInfo",
    "patientInstruction",
)
_REFERRAL_CATEGORY = "3457005"  # SNOMED "Patient referral": reveals nothing about the service
# An Appointment without its author's consent says only that one is scheduled (or cancelled):
# not when, where, with whom, for what, nor whether the person came.
_APPOINTMENT_KEPT = ("resourceType", "id", "meta", "basedOn", "created")
_APPOINTMENT_COARSE = {
    "arrived": "booked",
    "checked-in": "booked",
    "fulfilled": "booked",
    "noshow": "booked",
}


# --- the decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What a caller gets of one version: the whole (``view`` None) or ``view``; and the basis
    of the disclosure for the AuditEvent (``entity.detail``)."""

    view: dict[str, Any] | None
    basis: str


def _ref(element: Any) -> str | None:
    value = element.get("reference") if isinstance(element, dict) else None
    return value if isinstance(value, str) else None


def _note_author(note: Any) -> str | None:
    return _ref(note.get("authorReference")) if isinstance(note, dict) else None


def _basis(org: str, author: str | None, consents: dict[str, str], parts: list[str]) -> str:
    used = sorted({f"Consent/{consents[p]}" for p in parts if p != org and p in consents})
    if used:
        return "consent " + ", ".join(used)
    return "author" if author == org else "party"


def decide(
    body: dict[str, Any],
    org: str,
    consents: dict[str, str],
    *,
    owner_wrote: bool = True,
    author: str | None = None,
) -> Decision:
    """The view ``org`` gets of a labelled referral ``body``. ``consents``: for the patient,
    each organization whose records an active consent lets ``org`` receive (-> consent id).
    ``owner_wrote``: whether a Task's owner wrote this version or an earlier one (until it
    does, the Task holds nothing of the owner's). ``author``: an Appointment's, the
    organization that created it (the receiving organization).

    Pure: every path that shows a referral goes through it."""
    if body.get("resourceType") == "Appointment":
        if author is not None and (org == author or author in consents):
            return Decision(None, _basis(org, author, consents, [author]))
        return Decision(_redact_appointment(body), "redacted view")
    requester = _ref(body.get("requester"))
    if body.get("resourceType") == "ServiceRequest":
        if org == requester or (requester is not None and requester in consents):
            return Decision(None, _basis(org, requester, consents, [requester or ""]))
        return Decision(_redact_service_request(body, org), "redacted view")
    owner = _ref(body.get("owner"))
    sees_requester = org == requester or (requester is not None and requester in consents)
    # A Task nobody owns yet, or whose owner has not written it yet, holds nothing of an owner.
    sees_owner = owner is None or not owner_wrote or org == owner or owner in consents
    if sees_requester and sees_owner:
        parts = [p for p in (requester, owner) if p is not None]
        return Decision(
            None, _basis(org, requester if org == requester else owner, consents, parts)
        )
    return Decision(
        _redact_task(body, org, requester, owner, sees_requester, sees_owner), "redacted view"
    )


def _visible_notes(body: dict[str, Any], authors: set[str]) -> list[Any]:
    return [n for n in body.get("note", []) if _note_author(n) in authors]


def _tagged(out: dict[str, Any]) -> dict[str, Any]:
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), REDACTED_TAG]
    out["meta"] = meta
    return out


def _redact_task(
    body: dict[str, Any],
    org: str,
    requester: str | None,
    owner: str | None,
    sees_requester: bool,
    sees_owner: bool,
) -> dict[str, Any]:
    withheld = {"text"}  # the narrative may say anything
    if not sees_requester:
        withheld.update(_TASK_REQUESTER_PART)
    if not sees_owner:
        withheld.update(_TASK_OWNER_PART)
    out = {k: v for k, v in body.items() if k not in withheld and k != "note"}
    status = str(body.get("status"))
    if not sees_owner:
        out["status"] = _COARSE.get(status, status)
    reason_by_requester = status in _REQUESTER_STATES
    if "statusReason" in body and not (sees_requester if reason_by_requester else sees_owner):
        out.pop("statusReason")
        if status in _REASON_NOTED:
            out["statusReason"] = {"text": WITHHELD}
    authors = {org} | ({requester} if sees_requester and requester else set())
    authors |= {owner} if sees_owner and owner else set()
    notes = _visible_notes(body, authors)
    if notes:
        out["note"] = notes
    return _tagged(out)


def _redact_appointment(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k in _APPOINTMENT_KEPT}
    status = str(body.get("status"))
    out["status"] = _APPOINTMENT_COARSE.get(status, status)
    # Only the person stays of the participants (R4 requires one): not the place or the staff.
    out["participant"] = [
        {"actor": p["actor"], "status": p.get("status", "accepted")}
        for p in body.get("participant", [])
        if isinstance(p, dict) and str(_ref(p.get("actor"))).startswith("Patient/")
    ]
    return _tagged(out)


def _redact_service_request(body: dict[str, Any], org: str) -> dict[str, Any]:
    out = {
        k: v for k, v in body.items() if k not in (*_SR_REQUESTER_PART, "text", "note", "category")
    }
    out["code"] = {"text": "Referral (service details withheld under 42 CFR Part 2)"}
    categories = [
        c
        for c in body.get("category", [])
        if isinstance(c, dict)
        and any(x.get("code") == _REFERRAL_CATEGORY for x in c.get("coding", []))
    ]
    if categories:
        out["category"] = categories
    notes = _visible_notes(body, {org})
    if notes:
        out["note"] = notes
    return _tagged(out)


# --- applying it to stored versions ---------------------------------------------------------


def _needs_decision(ctx: WorkflowContext, stored: StoredResource) -> dict[str, Any] | None:
    """The body of ``stored`` if what this caller may see of it depends on who wrote what."""
    if (
        stored.raw is None
        or stored.resource_type not in REFERRAL_TYPES
        or ctx.principal is None
        or ctx.principal.is_admin
        or ctx.emergency_reason
        or ctx.organization is None
    ):
        return None
    head = head_of(stored.raw)  # most records need no decision: don't parse them whole
    if not head.labelled or head.patient is None:
        return None
    body: dict[str, Any] = orjson.loads(stored.raw)
    return body


async def disclose(
    conn: AsyncConnection, ctx: WorkflowContext, stored: StoredResource, *, record: bool = True
) -> StoredResource:
    """The view of ``stored`` this request may see, noted for the request's AuditEvent."""
    return (await disclose_all(conn, ctx, [stored], record=record))[0]


async def disclose_all(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    items: list[StoredResource],
    *,
    record: bool = True,
) -> list[StoredResource]:
    """``disclose`` for a page of records: the consents its decisions need in one query."""
    bodies = [_needs_decision(ctx, stored) for stored in items]  # each parsed once
    org = ctx.organization
    patients = {str(patient_of(b)) for b in bodies if b is not None}
    consents = (
        await consents_by_patient(conn, patients, org, ctx.purpose)
        if patients and org is not None
        else {}
    )
    # Which Task versions their owner has written: only then is there an owner's part to
    # withhold (asked only where it matters: not of the owner's own poll, nor under consent).
    tasks = [
        (stored.id, stored.version_id)
        for stored, body in zip(items, bodies, strict=True)
        if body is not None
        and stored.resource_type == "Task"
        and (owner := _ref(body.get("owner"))) is not None
        and owner != org
        and owner not in consents.get(str(patient_of(body)), {})
    ]
    writers = await values_up_to(conn, "Task", tasks, ACTOR_PARAM) if tasks else {}
    appointments = [
        (stored.id, stored.version_id)
        for stored, body in zip(items, bodies, strict=True)
        if body is not None and stored.resource_type == "Appointment"
    ]
    authors = (
        await index_values(conn, "Appointment", appointments, CREATOR_PARAM) if appointments else {}
    )
    shown = []
    for stored, body in zip(items, bodies, strict=True):
        if body is None or org is None:
            shown.append(stored)
            continue
        owner_wrote = _ref(body.get("owner")) in writers.get((stored.id, stored.version_id), ())
        decision = decide(
            body,
            org,
            consents.get(str(patient_of(body)), {}),
            owner_wrote=owner_wrote,
            author=authors.get((stored.id, stored.version_id)),
        )
        key = (stored.resource_type, stored.id, stored.version_id)
        ctx.disclosure_bases[key] = decision.basis
        if decision.view is None:
            shown.append(stored)
        else:
            shown.append(dataclasses.replace(stored, raw=orjson.dumps(decision.view).decode()))
    if record:
        ctx.accessed.extend(s for s in shown if s.raw is not None)
    return shown


def is_whole(stored: StoredResource, shown: StoredResource) -> bool:
    return shown.raw is stored.raw or shown.raw == stored.raw


# --- writes through a view ------------------------------------------------------------------

_MISSING = object()


def is_redacted_copy(body: dict[str, Any]) -> bool:
    """Whether a client sends back a view it was shown redacted (it carries the tag)."""
    meta = body.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("code") == "REDACTED" for t in tags
    )


def without_redaction_tag(meta: Any) -> Any:
    """``meta`` without the REDACTED tag (a client may send back what it was shown)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("tag"), list):
        return meta
    tags = [t for t in meta["tag"] if not (isinstance(t, dict) and t.get("code") == "REDACTED")]
    out = {k: v for k, v in meta.items() if k != "tag"}
    if tags:
        out["tag"] = tags
    return out


def merge_through_view(
    stored: dict[str, Any], view: dict[str, Any], sent: dict[str, Any]
) -> dict[str, Any]:
    """The new version when a caller shown ``view`` of ``stored`` sends ``sent``: each element
    the caller left as shown keeps its stored value (withheld or coarsened ones included); each
    element it changed, added or removed takes the change. Notes it was not shown are kept."""
    merged: dict[str, Any] = {}
    for key in [*sent, *(k for k in stored if k not in sent)]:
        if key in ("meta", "note"):
            continue
        if sent.get(key, _MISSING) == view.get(key, _MISSING):
            if key in stored:
                merged[key] = stored[key]
        elif key in sent:
            merged[key] = sent[key]
    shown_notes = view.get("note", [])
    sent_notes = sent.get("note", []) if isinstance(sent.get("note"), list) else []
    # In stored order: the notes it was not shown, and those it was shown and kept; then the
    # ones it added (a server use case may send the stored version back whole: each once).
    notes = [n for n in stored.get("note", []) if n not in shown_notes or n in sent_notes]
    notes += [n for n in sent_notes if n not in notes]
    if notes:
        merged["note"] = notes
    if "meta" in sent:
        merged["meta"] = without_redaction_tag(sent["meta"])
    return merged


async def stamp_note_authors(event: WriteEvent) -> None:
    """Each note a write adds to a referral is its writer's (who may read it is decided by
    authorship): the server sets ``authorReference``, whatever the client claimed. A REDACTED
    tag a client sends back is never stored."""
    body = event.body
    if body is None:
        return
    if "meta" in body:
        body["meta"] = without_redaction_tag(body["meta"])
    writer = event.ctx.organization
    principal = event.ctx.principal
    if writer is None or (principal is not None and principal.is_admin):
        return
    before = (event.current_body or {}).get("note", [])
    notes = body.get("note")
    if not isinstance(notes, list):
        return
    stamped = []
    for note in notes:
        if isinstance(note, dict) and note not in before:
            note = {k: v for k, v in note.items() if k not in ("authorString", "authorReference")}
            note["authorReference"] = {"reference": writer}
        stamped.append(note)
    body["note"] = stamped


def register(rules: RuleSet) -> None:
    for rtype in REFERRAL_TYPES:
        rules.on_write(rtype, stamp_note_authors)


# --- search sees only what the reader sees --------------------------------------------------

# Search parameters over each part of a labelled referral (search.params), and the party
# whose record that part is.
_GUARDED_PARAMS: dict[str, dict[str, str]] = {
    "Task": {
        "status": "owner",
        "business-status": "owner",
        "output": "owner",
        "period": "owner",
    },
    "ServiceRequest": {
        "code": "requester",
        "category": "requester",
        "supporting-info": "requester",
    },
    "Appointment": dict.fromkeys(
        (
            "date",
            "status",
            "actor",
            "location",
            "practitioner",
            "part-status",
            "appointment-type",
            "service-type",
            "identifier",
        ),
        CREATOR_PARAM,
    ),
}


def guarded_parties(request: SearchRequest, org: str) -> set[str]:
    """Whose part of a referral the search's criteria and sort order look at, unless the
    search is limited to that party being ``org`` (a provider's poll of its own Tasks)."""
    guarded = _GUARDED_PARAMS.get(request.resource_type, {})
    # A chained criterion's parameter belongs to another type (search.query refuses chains
    # into referral types, whose parts are disclosed apart): only the type's own count here.
    own = [c for c in request.criteria if not c.chain]
    names = [c.param.name for c in own] + [name for name, _ in request.sort]
    parties = {guarded[n] for n in names if n in guarded}
    return {
        party
        for party in parties
        if not any(c.param.name == party and c.modifier is None and c.values == (org,) for c in own)
    }


def _sees_part(rtype: str, cols: RowCols, org: str, party: str, purpose: str) -> Any:
    """SQL: ``org`` sees ``party``'s part of the row whole (``decide``'s rule)."""
    label = index_has(rtype, cols, "_security", "42CFRPart2")
    author = aliased(index_t, "guard_author")
    patient = aliased(index_t, "guard_patient")
    consented = version_has(
        patient,
        rtype,
        cols.id,
        cols.version_id,
        patient.c.param == "patient",
        consent_exists(patient.c.value, org, purpose, author.c.value),
        join=(
            author,
            and_(
                author.c.resource_type == patient.c.resource_type,
                author.c.resource_id == patient.c.resource_id,
                author.c.version_id == patient.c.version_id,
                author.c.param == party,
            ),
        ),
    )
    alternatives = [not_(label), index_has(rtype, cols, party, org), consented]
    if party == "owner":
        # Nothing of an owner to withhold while no owner has written the Task (``decide``).
        owned = aliased(index_t, "guard_owned")
        wrote = aliased(index_t, "guard_owner_wrote")
        alternatives.append(
            not_(
                version_has(
                    owned,
                    rtype,
                    cols.id,
                    cols.version_id,
                    owned.c.param == "owner",
                    join=(
                        wrote,
                        and_(
                            wrote.c.resource_type == owned.c.resource_type,
                            wrote.c.resource_id == owned.c.resource_id,
                            wrote.c.version_id <= owned.c.version_id,
                            wrote.c.param == ACTOR_PARAM,
                            wrote.c.value == owned.c.value,
                        ),
                    ),
                )
            )
        )
    return or_(*alternatives)


def search_filter(
    ctx: WorkflowContext, request: SearchRequest, access: AccessFilter
) -> AccessFilter:
    """``access`` for ``request``, narrowed so that criteria and sort orders over a part of a
    labelled referral the caller sees redacted match only where it sees that part whole:
    the withheld value can neither match, nor be counted, nor order the results."""
    principal, org = ctx.principal, ctx.organization
    parties = guarded_parties(request, org) if org is not None else set()
    if (
        not parties
        or principal is None
        or principal.is_admin
        or ctx.emergency_reason
        or org is None
    ):
        return access

    def narrowed(rtype: str, cols: RowCols) -> ColumnElement[bool] | None:
        allowed = access(rtype, cols)
        if allowed is None or rtype != request.resource_type:
            return allowed
        return and_(allowed, *(_sees_part(rtype, cols, org, p, ctx.purpose) for p in parties))

    return narrowed


# --- replays --------------------------------------------------------------------------------


def rerendered(body: Any, shown: list[StoredResource]) -> Any:
    """A kept response (a transaction-response Bundle, with searchset Bundles inside for its
    GET entries) with each resource in it replaced by ``shown``, the caller's view of it now;
    a resource it may no longer see is left out (an entry then answers 404)."""
    views = {(s.resource_type, s.id, s.version_id): s for s in shown}

    def view_of(resource: Any) -> Any:
        if not isinstance(resource, dict) or "resourceType" not in resource:
            return resource
        if resource.get("resourceType") == "Bundle":
            return walk_bundle(resource)
        version = str((resource.get("meta") or {}).get("versionId", ""))
        key = (str(resource.get("resourceType")), str(resource.get("id")), -1)
        if version.isascii() and version.isdigit():
            key = (key[0], key[1], int(version))
        found = views.get(key)
        if found is None or found.raw is None:
            return None
        return orjson.loads(found.raw)

    def walk_bundle(bundle: dict[str, Any]) -> dict[str, Any]:
        entries = []
        for entry in bundle.get("entry", []):
            if not isinstance(entry, dict) or "resource" not in entry:
                entries.append(entry)
                continue
            resource = view_of(entry["resource"])
            if resource is not None:
                entries.append({**entry, "resource": resource})
            elif isinstance(entry.get("response"), dict):  # a transaction entry: say why
                entries.append(
                    {
                        **{k: v for k, v in entry.items() if k != "resource"},
                        "response": {**entry["response"], "status": "404 Not Found"},
                    }
                )
            # a search match no longer visible: left out
        return {**bundle, "entry": entries}

    return view_of(body)
