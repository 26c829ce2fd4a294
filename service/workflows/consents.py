"""42 CFR Part 2: labels on write, consents, and consent in SQL.

Disclosure rule (README "42 CFR Part 2"): a Part-2-labelled record goes to an organization
other than its author only while an active Consent of its patient names that organization as a
recipient (provision.actor), for the request's purpose (default TREAT), within its period, and
was recorded by the program that holds the record (its custodian, ``Consent.organization``) or
by an administrator (§2.31: the patient's written consent is held by the discloser). A consent
that a recipient records as a copy of one it received authorizes nothing. The medical-emergency
exception (break the glass) is always audited.

What each party sees of each record is decided in ``workflows.disclosure``; this module applies
the labels on write, checks Consents, and holds the SQL conditions that find the consents in
force. The JMS consent use cases (record, revoke, view) are ``features.consents.records``.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, and_, bindparam, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain import sensitivity
from service.errors import BusinessRuleError, Issue
from service.fhir import catalogue
from service.fhir.r4 import SUPPORTED_TYPES
from service.search.conditions import rows_exist, version_has
from service.search.execute import RowCols
from service.storage import repository as repo
from service.storage.repository import aliased, index_t, resource_t
from service.workflows.canonicals import find_questionnaire
from service.workflows.rules import RuleSet, WriteEvent

GUARDED_TYPES = catalogue.names(part2="guarded")
# Internal index row of a Consent version: an organization whose records it authorizes
# disclosing (a custodian that recorded it, or any custodian when an administrator did).
DISCLOSER_PARAM = "_discloser"
CONSENT_STATUSES = frozenset(
    {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}
)


# --- labels on write ---------------------------------------------------------------------------


async def _referenced_is_labelled(conn: AsyncConnection, refs: list[Any]) -> bool:
    for ref in refs:
        value = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(value, str) or value.count("/") != 1:
            continue
        rtype, rid = value.split("/")
        stored = await repo.get_current(conn, rtype, rid)
        if stored is not None and stored.raw and sensitivity.is_labelled(orjson.loads(stored.raw)):
            return True
    return False


async def _needs_labels(event: WriteEvent, body: dict[str, Any]) -> bool:
    if sensitivity.is_labelled(body) or sensitivity.content_is_sud(body):
        return True
    rtype = body.get("resourceType")
    if rtype == "QuestionnaireResponse" and isinstance(body.get("questionnaire"), str):
        questionnaire = await find_questionnaire(event.conn, event.ctx, body["questionnaire"])
        return questionnaire is not None and sensitivity.is_sud_questionnaire(questionnaire)
    record = catalogue.BY_NAME.get(str(rtype))
    refs: list[Any] = []
    for element in record.labels_from if record is not None else ():
        value = body.get(element)
        refs.extend(value if isinstance(value, list) else [value])
    return await _referenced_is_labelled(event.conn, refs)


async def label_on_write(event: WriteEvent) -> None:
    """Apply the Part 2 labels the content calls for; never drop the server's earlier labels."""
    body = event.body
    if body is None:
        return
    previous = event.current_body
    if previous is not None and sensitivity.is_labelled(previous):
        # Labels are kept on every version, whatever a client sends.
        event.body = sensitivity.with_labels(body, sensitivity.removed_labels(previous, body))
        return
    if await _needs_labels(event, body):
        event.body = sensitivity.with_labels(body)


async def check_consent(event: WriteEvent) -> None:
    body = event.body
    if body is None:
        return
    problems = []
    if body.get("status") not in CONSENT_STATUSES:
        problems.append(("Consent.status", "status must be a Consent status"))
    if not (body.get("patient") or {}).get("reference", "").startswith("Patient/"):
        problems.append(("Consent.patient", "A disclosure consent names its patient"))
    if body.get("status") == "active":
        provision = body.get("provision") or {}
        if provision.get("type", "permit") != "permit":
            problems.append(("Consent.provision.type", "Only permit provisions are supported"))
        actors = [
            a.get("reference", {}).get("reference")
            for a in provision.get("actor", [])
            if isinstance(a, dict)
        ]
        if not any(isinstance(a, str) and a.startswith("Organization/") for a in actors):
            problems.append(
                (
                    "Consent.provision.actor",
                    "An active disclosure consent names at least one recipient Organization",
                )
            )
    if problems:
        raise BusinessRuleError(
            problems[0][1],
            issues=[Issue("error", "business-rule", m, (e,)) for e, m in problems],
        )


def register(rules: RuleSet) -> None:
    for rtype in SUPPORTED_TYPES:
        if rtype not in ("AuditEvent", "Consent"):
            rules.on_write(rtype, label_on_write)
    rules.on_write("Consent", check_consent)


# --- consent in SQL (search filtering) ---------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def discloser_entries(
    body: dict[str, Any] | None,
    *,
    writer: str | None,
    privileged: bool,
    resource_id: str,
    version_id: int,
) -> list[repo.IndexEntry]:
    """The ``_discloser`` index rows of a Consent version: each custodian
    (``Consent.organization``) that recorded it itself, or every custodian when an
    administrator (or the server) did. A consent recorded by anyone else authorizes nothing."""
    if body is None:
        return []
    custodians = {
        o.get("reference")
        for o in body.get("organization", [])
        if isinstance(o, dict) and isinstance(o.get("reference"), str)
    }
    return [
        repo.IndexEntry("Consent", resource_id, version_id, DISCLOSER_PARAM, value=custodian)
        for custodian in sorted(c for c in custodians if c is not None)
        if privileged or custodian == writer
    ]


def consent_exists(patient_ref: Any, org: str, purpose: str, discloser: Any) -> ColumnElement[bool]:
    """An active Consent of ``patient_ref``, recorded by ``discloser``, naming ``org`` as
    recipient, for ``purpose``, now."""
    c = aliased(index_t, "consent_patient")
    return rows_exist(
        _permitting(c, c.c.value == patient_ref, org, purpose, (c.c.resource_id,), discloser)
    )


def _permitting(
    c: Any,
    patient_match: ColumnElement[bool],
    org: str,
    purpose: str,
    columns: tuple[Any, ...],
    discloser: Any = None,
) -> Select[Any]:
    """``columns`` of the Consents' ``patient`` index rows ``c`` that match ``patient_match``
    and permit disclosure to ``org`` for ``purpose`` now (of ``discloser``'s records when
    given; else of any discloser's, whose ``_discloser`` row the caller joins)."""
    # Evaluated at each execution, so that a cached condition (``part2_condition``) never
    # holds a stale instant.
    now = bindparam("consent_now", callable_=_utcnow, type_=index_t.c.low.type, unique=True)
    rc = aliased(resource_t, "consent_current")

    def has(param: str, value: Any) -> ColumnElement[bool]:
        x = aliased(index_t, f"consent_{param.replace('-', '_')}")
        return version_has(
            x,
            "Consent",
            c.c.resource_id,
            c.c.version_id,
            x.c.param == param,
            x.c.value == value,
            # A discloser column is two levels out.
            correlate_except=True,
        )

    def rows(param: str) -> Any:
        return aliased(index_t, f"consent_any_{param}")

    period = rows("period")
    purposes = rows("purpose")
    period_ok = or_(
        not_(
            version_has(
                period, "Consent", c.c.resource_id, c.c.version_id, period.c.param == "period"
            )
        ),
        version_has(
            period,
            "Consent",
            c.c.resource_id,
            c.c.version_id,
            period.c.param == "period",
            period.c.low <= now,  # open ends are stored as OPEN_START / OPEN_END
            period.c.high >= now,
        ),
    )
    purpose_ok = or_(
        not_(
            version_has(
                purposes, "Consent", c.c.resource_id, c.c.version_id, purposes.c.param == "purpose"
            )
        ),
        has("purpose", purpose),
    )
    return (
        select(*columns)
        .select_from(c)
        .join(
            rc,
            and_(
                rc.c.resource_type == "Consent",
                rc.c.id == c.c.resource_id,
                rc.c.version_id == c.c.version_id,
                rc.c.deleted.is_(False),
            ),
        )
        .where(
            c.c.resource_type == "Consent",
            c.c.param == "patient",
            patient_match,
            has("status", "active"),
            has("actor", org),
            *([has(DISCLOSER_PARAM, discloser)] if discloser is not None else []),
            period_ok,
            purpose_ok,
        )
    )


@functools.lru_cache(maxsize=4096)
def part2_condition(
    rtype: str, cols: RowCols, org: str, *, purpose: str
) -> ColumnElement[bool] | None:
    """Extra visibility condition for labelled patient data (None: nothing to add). Built once
    per type, organization and purpose: the expression is immutable."""
    if rtype not in GUARDED_TYPES:
        return None
    lab = aliased(index_t, "part2_label")
    creator = aliased(index_t, "part2_creator")
    pat = aliased(index_t, "part2_patient")
    creator_of = aliased(index_t, "part2_discloser")
    labelled = version_has(
        lab,
        rtype,
        cols.id,
        cols.version_id,
        lab.c.param == "_security",
        lab.c.value == "42CFRPart2",
    )
    authored = version_has(
        creator,
        rtype,
        cols.id,
        cols.version_id,
        creator.c.param == "_creator-org",
        creator.c.value == org,
    )
    consented = version_has(
        pat,
        rtype,
        cols.id,
        cols.version_id,
        pat.c.param == "patient",
        # The record's author is its discloser: only its consents authorize.
        consent_exists(pat.c.value, org, purpose, creator_of.c.value),
        join=(
            creator_of,
            and_(
                creator_of.c.resource_id == pat.c.resource_id,
                creator_of.c.version_id == pat.c.version_id,
                creator_of.c.resource_type == pat.c.resource_type,
                creator_of.c.param == "_creator-org",
            ),
        ),
    )
    return or_(not_(labelled), authored, consented)


# --- consents in force, for a page of records ---------------------------------------------------


async def consents_by_patient(
    conn: AsyncConnection, patients: set[str], org: str, purpose: str
) -> dict[str, dict[str, str]]:
    """For each of ``patients``: the organizations whose records an active consent lets ``org``
    receive now (discloser -> that consent's id, the lowest if several). One query for a page
    of records."""
    if not patients:
        return {}
    c = aliased(index_t, "consent_patient")
    d = aliased(index_t, "consent_discloser")
    stmt = _permitting(
        c,
        c.c.value.in_(bindparam("consent_patients", expanding=True)),
        org,
        purpose,
        (c.c.value, d.c.value, c.c.resource_id),
    ).join(
        d,
        and_(
            d.c.resource_type == "Consent",
            d.c.resource_id == c.c.resource_id,
            d.c.version_id == c.c.version_id,
            d.c.param == DISCLOSER_PARAM,
        ),
    )
    found: dict[str, dict[str, str]] = {}
    for patient, discloser, consent in await conn.execute(
        stmt, {"consent_patients": sorted(patients)}
    ):
        by_discloser = found.setdefault(str(patient), {})
        if discloser not in by_discloser or str(consent) < by_discloser[discloser]:
            by_discloser[str(discloser)] = str(consent)
    return found
