"""42 CFR Part 2: labels on write, consent, and what each organization may see.

Disclosure rule (README "42 CFR Part 2"): a Part-2-labelled resource goes to an organization
other than its author only while an active Consent of its patient names that organization as a
recipient (provision.actor), for the request's purpose (default TREAT), within its period; or
under the medical-emergency exception (break the glass), which is always audited.

* Labelled patient data (screenings, scores, dispenses, education) without such a consent is
  left out of searches and answers 404 on read.
* Referrals stay visible to the parties so they can act, but redacted without consent:
  - the receiving organization sees that a referral exists, its generic category, priority,
    release window, requester, owner and patient reference, not the SUD service codes, notes,
    reasons or supporting information;
  - the referring organization sees the provider's progress only as requested / accepted /
    rejected / closed (completed), without milestones, outputs or reasons written by the
    provider (these are the provider's Part 2 disclosures back).
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, and_, bindparam, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain import sensitivity
from service.errors import BusinessRuleError
from service.fhir.head import head_of, patient_of
from service.fhir.r4 import SUPPORTED_TYPES
from service.search.dates import format_instant
from service.search.execute import RowCols
from service.search.query import probe_exists
from service.storage import repository as repo
from service.storage.repository import StoredResource, aliased, index_t, probe_type, resource_t
from service.workflows.context import WorkflowContext
from service.workflows.rules import RuleSet, WriteEvent

REDACTED_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "REDACTED",
    "display": "redacted",
}
WITHHELD = "Details withheld under 42 CFR Part 2: no active consent names your organization"
GUARDED_TYPES = frozenset(
    {"QuestionnaireResponse", "Observation", "Procedure", "MedicationDispense", "SupplyDelivery"}
)
REFERRAL_TYPES = frozenset({"Task", "ServiceRequest"})
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
        from service.workflows.assessments import find_questionnaire

        questionnaire = await find_questionnaire(event.conn, event.ctx, body["questionnaire"])
        return questionnaire is not None and sensitivity.is_sud_questionnaire(questionnaire)
    refs: list[Any] = []
    if rtype == "Observation":
        refs = list(body.get("derivedFrom", [])) + list(body.get("focus", []))
    elif rtype == "Task":
        refs = [body.get("focus"), *body.get("basedOn", [])]
    elif rtype in ("Procedure", "ServiceRequest"):
        refs = list(body.get("basedOn", []))
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
        from service.errors import Issue

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


def consent_exists(patient_ref: Any, org: str, purpose: str) -> ColumnElement[bool]:
    """An active Consent of ``patient_ref`` naming ``org`` as recipient, for ``purpose``, now."""
    return probe_exists(consent_ids(patient_ref, org, purpose))


def consent_ids(patient_ref: Any, org: str, purpose: str) -> Select[Any]:
    """Ids of the active Consents of ``patient_ref`` that permit disclosure to ``org`` now."""
    c = aliased(index_t, "consent_patient")
    return _permitting(c, c.c.value == patient_ref, org, purpose, (c.c.resource_id,))


def _permitting(
    c: Any,
    patient_match: ColumnElement[bool],
    org: str,
    purpose: str,
    columns: tuple[Any, ...],
) -> Select[Any]:
    """``columns`` of the Consents' ``patient`` index rows ``c`` that match ``patient_match``
    and permit disclosure to ``org`` for ``purpose`` now."""
    # Evaluated at each execution, so that a cached condition (``part2_condition``) never
    # holds a stale instant.
    now = bindparam("consent_now", callable_=_utcnow, type_=index_t.c.low.type, unique=True)
    rc = aliased(resource_t, "consent_current")

    def has(param: str, value: Any) -> ColumnElement[bool]:
        x = aliased(index_t, f"consent_{param.replace('-', '_')}")
        return probe_exists(
            select(1)
            .select_from(x)
            .where(
                probe_type(x.c.resource_type, "Consent"),
                x.c.resource_id == c.c.resource_id,
                x.c.version_id == c.c.version_id,
                x.c.param == param,
                x.c.value == value,
            )
        )

    def rows(param: str) -> Any:
        return aliased(index_t, f"consent_any_{param}")

    period = rows("period")
    purposes = rows("purpose")
    period_ok = or_(
        not_(
            probe_exists(
                select(1)
                .select_from(period)
                .where(
                    probe_type(period.c.resource_type, "Consent"),
                    period.c.resource_id == c.c.resource_id,
                    period.c.version_id == c.c.version_id,
                    period.c.param == "period",
                )
            )
        ),
        probe_exists(
            select(1)
            .select_from(period)
            .where(
                probe_type(period.c.resource_type, "Consent"),
                period.c.resource_id == c.c.resource_id,
                period.c.version_id == c.c.version_id,
                period.c.param == "period",
                period.c.low <= now,  # open ends are stored as OPEN_START / OPEN_END
                period.c.high >= now,
            )
        ),
    )
    purpose_ok = or_(
        not_(
            probe_exists(
                select(1)
                .select_from(purposes)
                .where(
                    probe_type(purposes.c.resource_type, "Consent"),
                    purposes.c.resource_id == c.c.resource_id,
                    purposes.c.version_id == c.c.version_id,
                    purposes.c.param == "purpose",
                )
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
    labelled = probe_exists(
        select(1)
        .select_from(lab)
        .where(
            probe_type(lab.c.resource_type, rtype),
            lab.c.resource_id == cols.id,
            lab.c.version_id == cols.version_id,
            lab.c.param == "_security",
            lab.c.value == "42CFRPart2",
        )
    )
    authored = probe_exists(
        select(1)
        .select_from(creator)
        .where(
            probe_type(creator.c.resource_type, rtype),
            creator.c.resource_id == cols.id,
            creator.c.version_id == cols.version_id,
            creator.c.param == "_creator-org",
            creator.c.value == org,
        )
    )
    consented = probe_exists(
        select(1)
        .select_from(pat)
        .where(
            probe_type(pat.c.resource_type, rtype),
            pat.c.resource_id == cols.id,
            pat.c.version_id == cols.version_id,
            pat.c.param == "patient",
            consent_exists(pat.c.value, org, purpose),
        )
    )
    return or_(not_(labelled), authored, consented)


# --- redaction of referrals --------------------------------------------------------------------


async def has_consent(
    conn: AsyncConnection, patient_ref: str, org: str, purpose: str
) -> str | None:
    """The id of an active consent permitting disclosure to ``org`` now, or None."""
    return (await consents_by_patient(conn, {patient_ref}, org, purpose)).get(patient_ref)


async def consents_by_patient(
    conn: AsyncConnection, patients: set[str], org: str, purpose: str
) -> dict[str, str]:
    """For each of ``patients`` with an active consent permitting disclosure to ``org`` now,
    that consent's id (the lowest, if several): one query for a page of records."""
    if not patients:
        return {}
    c = aliased(index_t, "consent_patient")
    stmt = _permitting(
        c,
        c.c.value.in_(bindparam("consent_patients", expanding=True)),
        org,
        purpose,
        (c.c.value, c.c.resource_id),
    )
    found: dict[str, str] = {}
    for patient, consent in await conn.execute(stmt, {"consent_patients": sorted(patients)}):
        if patient not in found or str(consent) < found[patient]:
            found[str(patient)] = str(consent)
    return found


def _tag(body: dict[str, Any]) -> dict[str, Any]:
    meta = dict(body.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), REDACTED_TAG]
    body["meta"] = meta
    return body


# Elements a redacted referral may lack; a party that updates from a redacted copy keeps the
# stored values of these (workflows/referrals.py).
WITHHELD_ELEMENTS = (
    "code",
    "orderDetail",
    "reasonCode",
    "reasonReference",
    "supportingInfo",
    "note",
    "description",
    "input",
    "text",
    "businessStatus",
    "output",
    "statusReason",
)
_OWNER_WITHHELD = WITHHELD_ELEMENTS[:9]


def redact_for_owner(body: dict[str, Any]) -> dict[str, Any]:
    """What a receiving organization sees of a labelled referral without consent."""
    out = {k: v for k, v in body.items() if k not in _OWNER_WITHHELD}
    if body.get("resourceType") == "ServiceRequest":
        out["code"] = {"text": "Referral (service details withheld under 42 CFR Part 2)"}
        out["category"] = [
            c
            for c in body.get("category", [])
            if any(x.get("code") == "3457005" for x in c.get("coding", []))
        ]
    if body.get("resourceType") == "Task" and "code" in body:
        out["code"] = body["code"]  # 'fulfill' reveals nothing
    return _tag(out)


_COARSE = {"in-progress": "accepted", "on-hold": "accepted", "failed": "completed"}


def redact_for_requester(body: dict[str, Any]) -> dict[str, Any]:
    """What the referring organization sees of the provider's progress without consent."""
    out = {
        k: v
        for k, v in body.items()
        if k not in ("businessStatus", "output", "statusReason", "note", "text")
    }
    status = str(body.get("status"))
    out["status"] = _COARSE.get(status, status)
    if status in ("rejected", "failed", "on-hold"):
        out["statusReason"] = {"text": WITHHELD}
    return _tag(out)


async def disclose(
    conn: AsyncConnection, ctx: WorkflowContext, stored: StoredResource, *, record: bool = True
) -> StoredResource:
    """The version of ``stored`` this request may see (redacted referral parts), noted for the
    request's AuditEvent."""
    shown = await _disclosed(conn, ctx, stored, _needs_decision(ctx, stored), None)
    if record and shown.raw is not None:
        ctx.accessed.append(shown)
    return shown


async def disclose_all(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    items: list[StoredResource],
    *,
    record: bool = True,
    actors: dict[tuple[str, int], str | None] | None = None,
) -> list[StoredResource]:
    """``disclose`` for a page of records, with the consents and Task actors its decisions need
    fetched in one query each (not one or two per labelled record). ``actors``: the Task
    versions' acting organizations, when the caller has them already."""
    bodies = [_needs_decision(ctx, stored) for stored in items]  # each parsed once
    lookups = await _lookups_for(conn, ctx, items, bodies, actors)
    shown = [
        await _disclosed(conn, ctx, stored, body, lookups)
        for stored, body in zip(items, bodies, strict=True)
    ]
    if record:
        ctx.accessed.extend(s for s in shown if s.raw is not None)
    return shown


@dataclasses.dataclass(frozen=True)
class _Lookups:
    consents: dict[str, str]  # patient -> consent permitting disclosure to the caller now
    actors: dict[tuple[str, int], str | None]  # Task (id, version) -> its acting organization


def _needs_decision(ctx: WorkflowContext, stored: StoredResource) -> dict[str, Any] | None:
    """The body of ``stored`` if what this caller may see of it depends on consent."""
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


async def _lookups_for(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    items: list[StoredResource],
    bodies: list[dict[str, Any] | None],
    actors: dict[tuple[str, int], str | None] | None,
) -> _Lookups | None:
    patients: set[str] = set()
    tasks: list[tuple[str, int]] = []
    for stored, body in zip(items, bodies, strict=True):
        if body is None:
            continue
        patients.add(str(patient_of(body)))
        requester = (body.get("requester") or {}).get("reference")
        if stored.resource_type == "Task" and requester == ctx.organization:
            tasks.append((stored.id, stored.version_id))  # whose actor decides (below)
    if not patients or ctx.organization is None:
        return None
    return _Lookups(
        consents=await consents_by_patient(conn, patients, ctx.organization, ctx.purpose),
        actors=(
            actors
            if actors is not None and all(t in actors for t in tasks)
            else await repo.index_values(conn, "Task", tasks, "_actor")
        ),
    )


async def _disclosed(
    conn: AsyncConnection,
    ctx: WorkflowContext,
    stored: StoredResource,
    body: dict[str, Any] | None,
    lookups: _Lookups | None,
) -> StoredResource:
    """What the caller may see of ``stored``, whose ``body`` is ``_needs_decision``'s answer."""
    org = ctx.organization
    if body is None or org is None:
        return stored
    patient = str(patient_of(body))

    async def consented() -> bool:
        if lookups is not None:
            return patient in lookups.consents
        return await has_consent(conn, patient, org, ctx.purpose) is not None

    requester = (body.get("requester") or {}).get("reference")
    owners = {(body.get("owner") or {}).get("reference")} | {
        p.get("reference") for p in body.get("performer", []) if isinstance(p, dict)
    }
    if org == requester:
        if stored.resource_type != "Task":
            return stored
        key = (stored.id, stored.version_id)
        actor = (
            lookups.actors.get(key)
            if lookups is not None
            else await repo.index_value(conn, "Task", stored.id, stored.version_id, "_actor")
        )
        if actor in (None, org) and body.get("status") in (
            "requested",
            "draft",
            "cancelled",
            "entered-in-error",
        ):
            return stored
        if await consented():
            return stored
        redacted = redact_for_requester(body)
    elif org in owners:
        if await consented():
            return stored
        redacted = redact_for_owner(body)
    else:
        return stored
    return dataclasses.replace(stored, raw=orjson.dumps(redacted).decode())


# --- the JMS consent API -----------------------------------------------------------------------

POLICY_URI = "https://www.ecfr.gov/current/title-42/chapter-I/subchapter-A/part-2"
REVOCATION_EXTENSION = "https://handoff.dev/fhir/StructureDefinition/revocation-reason"


def consent_resource(
    *,
    patient_id: str,
    organization: str,
    signed_at: datetime,
    signed_by: str,
    recipients: list[str],
    purposes: list[str],
    expires: datetime | None,
    form: dict[str, Any] | None,
) -> dict[str, Any]:
    provision: dict[str, Any] = {
        "type": "permit",
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                        }
                    ]
                },
                "reference": {"reference": r},
            }
            for r in recipients
        ],
        "action": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                        "code": "disclose",
                    }
                ]
            }
        ],
        "purpose": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}
            for p in purposes
        ],
        "securityLabel": [
            {"system": sensitivity.ACT_CODE, "code": "SUD"},
            {"system": sensitivity.ACT_CODE, "code": "42CFRPart2"},
        ],
    }
    period = {"start": format_instant(signed_at)}
    if expires:
        period["end"] = format_instant(expires)
    provision["period"] = period
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "64292-6",
                        "display": "Release of information consent",
                    }
                ]
            },
            {"coding": [{"system": sensitivity.ACT_CODE, "code": "IDSCL"}]},
        ],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": format_instant(signed_at),
        "performer": [{"display": signed_by}],
        "organization": [{"reference": organization}],
        "policy": [{"uri": POLICY_URI}],
        "policyRule": {"coding": [{"system": sensitivity.ACT_CODE, "code": "OPTIN"}]},
        "provision": provision,
    }
    if form is not None:
        consent["sourceAttachment"] = form
    return consent


async def record_consent(
    ctx: WorkflowContext,
    *,
    person: Any,
    signed_at: datetime,
    signed_by: str,
    recipients: list[str],
    purposes: list[str],
    expires: datetime | None,
    form: dict[str, Any] | None,
    idempotency_key: str | None,
    fingerprint: str,
) -> tuple[int, dict[str, Any]]:
    """``POST /v1/consents``: the person's signed Part 2 consent, as a FHIR Consent."""
    from service.errors import ForbiddenError, Issue
    from service.workflows import idempotency
    from service.workflows import resources as wf
    from service.workflows.people import match_or_create_patient

    assert ctx.principal is not None
    organization = ctx.organization
    if organization is None:
        raise ForbiddenError("Only a client acting for an organization records consents")

    async def create(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        unknown = []
        for i, ref in enumerate(recipients):
            if not await repo.resource_exists(conn, "Organization", ref.split("/", 1)[1]):
                unknown.append(
                    Issue("error", "not-found", f"{ref} is not known here", (f"recipients[{i}]",))
                )
        if unknown:
            raise BusinessRuleError(unknown[0].diagnostics, issues=unknown)
        patient_id, _ = await match_or_create_patient(conn, ctx, person)
        consent = consent_resource(
            patient_id=patient_id,
            organization=organization,
            signed_at=signed_at,
            signed_by=signed_by,
            recipients=recipients,
            purposes=purposes,
            expires=expires,
            form=form,
        )
        created = await wf.create_in(conn, ctx, consent)
        body = consent_view(orjson.loads(created.stored.raw or "{}"))
        return 201, body

    return await idempotency.run_once(
        ctx, key=idempotency_key, fingerprint=fingerprint, work=create
    )


def consent_view(consent: dict[str, Any]) -> dict[str, Any]:
    provision = consent.get("provision") or {}
    return {
        "consent_id": consent.get("id"),
        "patient_id": str((consent.get("patient") or {}).get("reference", "")).removeprefix(
            "Patient/"
        ),
        "status": consent.get("status"),
        "signed_at": consent.get("dateTime"),
        "recipients": [
            (a.get("reference") or {}).get("reference") for a in provision.get("actor", [])
        ],
        "purposes": [p.get("code") for p in provision.get("purpose", [])],
        "expires": (provision.get("period") or {}).get("end"),
    }


async def revoke_consent(ctx: WorkflowContext, consent_id: str, *, reason: str) -> dict[str, Any]:
    """Takes effect for the very next request: every check reads the current Consent."""
    from service.errors import ForbiddenError
    from service.storage.db import write_transaction
    from service.workflows import resources as wf

    async with write_transaction(ctx.engine) as conn:
        # Locked, then read: a second revocation (a retry, a double click) waits and then finds
        # the Consent inactive, instead of failing on its version.
        stored = await wf.read_in(conn, ctx, "Consent", consent_id, lock=True)
        consent = orjson.loads(stored.raw or "{}")
        custodians = {o.get("reference") for o in consent.get("organization", [])}
        if ctx.organization not in custodians and not (ctx.principal and ctx.principal.is_admin):
            raise ForbiddenError("Only the organization that recorded the consent can revoke it")
        if consent.get("status") == "inactive":
            return consent_view(consent)
        consent["status"] = "inactive"
        consent.setdefault("extension", []).append(
            {
                "url": REVOCATION_EXTENSION,
                "valueString": reason,
            }
        )
        result = await wf.update_in(
            conn, ctx, "Consent", consent_id, consent, if_match=stored.version_id
        )
        return consent_view(orjson.loads(result.stored.raw or "{}"))
