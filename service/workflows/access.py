"""Who may see and change what: organization tenancy plus SMART scopes, in one place.

Tenancy rules (a client acts for one Organization, ``org`` below):

* Directory data (Organization, HealthcareService, Location, Practitioner, PractitionerRole,
  Questionnaire, CodeSystem, ValueSet, Medication) is readable by every authenticated client and
  written only by administrators.
* A Task is visible to its requester and its owner, to the organization that created it, and
  (while ``requested`` with no owner) to any organization that may claim it.
* A ServiceRequest is visible to its requester and performer, its creator, and the owner or
  requester of any Task whose focus it is.
* An Appointment is visible to its creator (the receiving organization that booked it) and
  to the owner or requester of any Task of the referral it is ``basedOn``.
* A Patient, and patient data (QuestionnaireResponse, Observation, Procedure, Consent,
  MedicationDispense, SupplyDelivery, RelatedPerson), are visible to their creator and to the
  owner or requester of any Task for that patient (the referral is the care relationship); a
  Consent also to its custodian (``Consent.organization``), who may always revoke it.
  42 CFR Part 2 consent narrows this further for labelled records.
* A PlanDefinition is visible to the organization that published it; the built-in follow-up
  plan (created by the service itself) to everyone.
* Everything else is visible to the organization that created it.
* Administrators (``handoff/admin``) see everything. Data the caller may not see answers 404
  on read and is left out of search results.

Scopes: each interaction needs its SMART action on the type (c r u d s): read, vread and
instance history ``r``; search and type or system history ``s``; update, patch and an update
that creates ``u``. Constrained scopes (``system/Task.rs?owner=Organization/1``) add their
constraints as search criteria, and writes must satisfy them before and after.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, and_, false, literal, or_, select, true

from service.auth.principal import Principal
from service.auth.scopes import Action
from service.errors import ForbiddenError, InsufficientScopeError
from service.fhir import catalogue
from service.fhir.r4 import SUPPORTED_TYPES
from service.search.conditions import rows_exist, version_has
from service.search.execute import AccessFilter, RowCols, allow_all
from service.search.params import params_for
from service.search.query import Criterion, criterion_condition
from service.storage.repository import IndexEntry, aliased, index_t, resource_t
from service.workflows.consents import part2_condition

DIRECTORY_TYPES = catalogue.names(tenancy="directory")
PATIENT_DATA_TYPES = catalogue.names(tenancy="patient-data")
CREATOR_PARAM = "_creator-org"  # internal index row: the organization that created a resource
ACTOR_PARAM = "_actor"  # internal index row: who wrote this version (organization or client)


def require_scope(principal: Principal | None, resource_type: str, action: Action) -> None:
    if principal is None:  # internal use (demo seeding, CLI): no token involved
        return
    if not principal.scopes.allows(resource_type, action):
        names = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
        raise InsufficientScopeError(
            f"The access token's scopes do not allow {names[action]} on {resource_type} "
            f"(needs system/{resource_type}.{action} or wider)"
        )


def require_scope_on_any(principal: Principal | None, action: Action) -> None:
    """System-level interactions (system history) need the action on at least one type."""
    if principal is None:
        return
    if not any(principal.scopes.allows(rtype, action) for rtype in SUPPORTED_TYPES):
        raise InsufficientScopeError(
            f"The access token's scopes allow '{action}' on no resource type "
            f"(needs system/*.{action} or system/<type>.{action})"
        )


def creator_entries(
    organization: str | None,
    *,
    resource_type: str,
    resource_id: str,
    version_id: int,
    previous_creator: str | None,
) -> list[IndexEntry]:
    creator = previous_creator or organization
    entries = []
    if creator:
        entries.append(
            IndexEntry(
                resource_type=resource_type,
                resource_id=resource_id,
                version_id=version_id,
                param=CREATOR_PARAM,
                value=creator,
            )
        )
    if organization:
        entries.append(
            IndexEntry(
                resource_type=resource_type,
                resource_id=resource_id,
                version_id=version_id,
                param=ACTOR_PARAM,
                value=organization,
            )
        )
    return entries


# A Task's owner and requester see the resources these Task parameters reference (see
# ``tenancy_condition``); param -> (target type, element for error messages).
TASK_LINKS = {"patient": ("Patient", "Task.for"), "focus": ("ServiceRequest", "Task.focus")}


def linked_targets(
    principal: Principal | None, resource_type: str, entries: list[IndexEntry]
) -> list[tuple[str, str, str]]:
    """(type, id, element) of what a write would link its parties to. The writer must see each,
    or a client could reach any patient by naming it in a Task of its own."""
    if principal is None or principal.is_admin or resource_type != "Task":
        return []
    out = []
    for e in entries:
        target_type, element = TASK_LINKS.get(e.param, ("", ""))
        prefix = f"{target_type}/"
        if target_type and e.value and e.value.startswith(prefix):
            out.append((target_type, e.value.removeprefix(prefix), element))
    return out


# --- read side -------------------------------------------------------------------------------


def index_has(
    rtype: str, cols: RowCols, param: str | tuple[str, ...], value: Any
) -> ColumnElement[bool]:
    """SQL: the row's version has an index row of ``param`` (one of them) with ``value``."""
    c = index_t.c
    params = (param,) if isinstance(param, str) else param
    return version_has(
        index_t,
        rtype,
        cols.id,
        cols.version_id,
        c.param.in_(params) if len(params) > 1 else c.param == params[0],
        c.value == value,
    )


def _task_links(org: str, param: str, target: Any) -> ColumnElement[bool]:
    """A current Task whose ``param`` references ``target`` and whose owner or requester is org."""
    f = aliased(index_t, "task_link")
    o = aliased(index_t, "task_party")
    r = aliased(resource_t, "task_current")
    return rows_exist(
        select(1)
        .select_from(f)
        .join(
            r,
            and_(
                r.c.resource_type == "Task",
                r.c.id == f.c.resource_id,
                r.c.version_id == f.c.version_id,
                r.c.deleted.is_(False),
            ),
        )
        .where(
            f.c.resource_type == "Task",
            f.c.param == param,
            f.c.value == target,
            version_has(
                o,
                "Task",
                f.c.resource_id,
                f.c.version_id,
                o.c.param.in_(("owner", "requester")),
                o.c.value == org,
            ),
        )
    )


@functools.lru_cache(maxsize=4096)
def tenancy_condition(rtype: str, cols: RowCols, org: str) -> ColumnElement[bool]:
    """What ``org`` may see of ``rtype`` (built once per organization and type: SQL
    expressions are immutable, and building this one costs more than running it)."""
    if rtype in DIRECTORY_TYPES:
        return true()
    created = index_has(rtype, cols, CREATOR_PARAM, org)
    if rtype == "Task":
        unowned_open = and_(
            ~version_has(index_t, "Task", cols.id, cols.version_id, index_t.c.param == "owner"),
            index_has(rtype, cols, "status", "requested"),
        )
        return or_(created, index_has(rtype, cols, ("owner", "requester"), org), unowned_open)
    if rtype == "ServiceRequest":
        return or_(
            created,
            index_has(rtype, cols, ("requester", "performer"), org),
            _task_links(org, "focus", literal("ServiceRequest/") + cols.id),
        )
    if rtype == "Appointment":  # the parties of the referral it was booked for
        b = aliased(index_t, "appointment_referral")
        return or_(
            created,
            version_has(
                b,
                rtype,
                cols.id,
                cols.version_id,
                b.c.param == "based-on",
                _task_links(org, "focus", b.c.value),
            ),
        )
    if rtype == "PlanDefinition":  # its creator's; the built-in one (no creator) everyone's
        builtin = ~version_has(
            index_t, rtype, cols.id, cols.version_id, index_t.c.param == CREATOR_PARAM
        )
        return or_(created, builtin)
    if rtype == "Patient":
        return or_(created, _task_links(org, "patient", literal("Patient/") + cols.id))
    if rtype in PATIENT_DATA_TYPES:
        p = aliased(index_t, "own_patient")
        linked = version_has(
            p,
            rtype,
            cols.id,
            cols.version_id,
            p.c.param == "patient",
            _task_links(org, "patient", p.c.value),
        )
        if rtype == "Consent":  # its custodian may always see (and revoke) it
            return or_(created, linked, index_has(rtype, cols, "organization", org))
        return or_(created, linked)
    return created


def _constraint_condition(
    rtype: str, cols: RowCols, constraints: list[dict[str, list[str]]], base_url: str | None
) -> ColumnElement[bool]:
    if not constraints:
        return true()
    known = params_for(rtype)
    alternatives = []
    for constraint in constraints:
        parts: list[ColumnElement[bool]] = []
        for name, values in constraint.items():
            param = known.get(name)
            if param is None:  # a constraint on a parameter we do not index matches nothing
                parts.append(false())
                continue
            parts.append(
                criterion_condition(
                    Criterion(param=param, modifier=None, values=tuple(values)),
                    rtype,
                    id_col=cols.id,
                    version_col=cols.version_id,
                    last_updated_col=cols.last_updated,
                    base_url=base_url,
                )
            )
        alternatives.append(and_(*parts))
    return or_(*alternatives)


def access_filter(
    principal: Principal | None,
    action: Action,
    *,
    base_url: str | None,
    purpose: str = "TREAT",
    emergency: bool = False,
) -> AccessFilter:
    """What ``principal`` may see when it ``action``s (r: read, includes; s: search).

    Besides tenancy and scopes, 42 CFR Part 2: labelled patient data of another author needs
    an active consent naming the caller's organization (unless breaking the glass)."""
    if principal is None or principal.is_admin:
        return allow_all
    org = principal.organization

    def visible(rtype: str, cols: RowCols) -> ColumnElement[bool] | None:
        if not principal.scopes.allows(rtype, action):
            return None
        constraints = principal.scopes.constraints(rtype, action)
        if constraints:  # rare (SMART v2 constrained scopes): built each time
            return _visible_condition(rtype, cols, org, constraints, base_url, purpose, emergency)
        return _cached_visible_condition(rtype, cols, org, (), base_url, purpose, emergency)

    return visible


def _visible_condition(
    rtype: str,
    cols: RowCols,
    org: str | None,
    constraints: Any,
    base_url: str | None,
    purpose: str,
    emergency: bool,
) -> ColumnElement[bool] | None:
    scope = _constraint_condition(rtype, cols, list(constraints), base_url)
    if org is None:  # a client with no organization sees directory data only
        return scope if rtype in DIRECTORY_TYPES else None
    condition = and_(tenancy_condition(rtype, cols, org), scope)
    part2 = None if emergency else part2_condition(rtype, cols, org, purpose=purpose)
    return condition if part2 is None else and_(condition, part2)


# Without scope constraints the condition depends only on hashable values: build it once (a
# cached statement part is also a memoized cache key for SQLAlchemy).
_cached_visible_condition = functools.lru_cache(maxsize=4096)(_visible_condition)


def tenancy_filter(
    principal: Principal | None, *, purpose: str = "TREAT", emergency: bool = False
) -> AccessFilter:
    """What ``principal``'s organization may act on, whatever its read scopes: the write side
    (update, patch, delete) finds its target with this, and ``check_write`` applies the write
    scope's own constraints, so a write needs no read scope (SMART: ``u`` alone may update).

    A write needs read access first: 42 CFR Part 2 narrows it exactly as it narrows a read, so
    a record the caller may not read can be neither changed, tested (JSON Patch) nor deleted."""
    if principal is None or principal.is_admin:
        return allow_all
    org = principal.organization

    def visible(rtype: str, cols: RowCols) -> ColumnElement[bool] | None:
        return _cached_visible_condition(rtype, cols, org, (), None, purpose, emergency)

    return visible


# --- write side ------------------------------------------------------------------------------


def check_write(
    principal: Principal | None,
    *,
    action: Action,
    resource_type: str,
    body: dict[str, Any] | None,
    new_index: list[IndexEntry],
    old_index: list[IndexEntry],
    creating: bool,
    owner_maintained: bool = False,
) -> None:
    """Tenancy and scope-constraint rules for a write (the caller checked the plain scope).

    ``creating``: no live version exists yet (a create, or an update that creates: upsert), so
    the rules for new resources apply whatever the interaction. ``owner_maintained``: a change
    to directory data that the caller's organization maintains itself (``RuleSet``).
    """
    if principal is None or principal.is_admin:
        return
    if resource_type in DIRECTORY_TYPES and not owner_maintained:
        raise ForbiddenError(f"{resource_type} is directory data: only administrators change it")
    if principal.organization is None:
        raise ForbiddenError("This client acts for no organization and may not write data")
    if creating and resource_type in ("Task", "ServiceRequest") and body is not None:
        requester = (body.get("requester") or {}).get("reference")
        if requester != principal.organization:
            raise ForbiddenError(
                f"A {resource_type} you create must name your organization "
                f"({principal.organization}) as its requester",
                expression=[f"{resource_type}.requester"],
            )
    # Constrained scopes must cover both the stored resource and what it becomes.
    for entries in (new_index, old_index) if old_index else (new_index,):
        values: dict[str, list[str]] = {}
        for e in entries:
            if e.value is not None:
                values.setdefault(e.param, []).append(e.value)
        if not principal.scopes.matches_resource(resource_type, action, values):
            raise InsufficientScopeError(
                f"The access token's scope constraints do not cover this {resource_type}"
            )


AccessFactory = Callable[[Principal | None, Action], AccessFilter]
