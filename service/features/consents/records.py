"""The consent use cases of the JMS API (``/v1/consents``): record a signed Part 2 consent as a
FHIR Consent, revoke it, and the plain view of one. What a consent in force permits is decided
in ``workflows.consents`` (SQL) and ``workflows.disclosure``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain import sensitivity
from service.errors import BusinessRuleError, ForbiddenError, Issue
from service.features.people import match_or_create_patient
from service.fhir.dates import format_instant, parse_range
from service.storage import repository as repo
from service.storage.db import write_transaction
from service.telemetry import traced_workflow
from service.workflows import idempotency
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

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


@traced_workflow("workflow.record_consent", resource_type="Consent", interaction="create")
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


def consent_status(consent: dict[str, Any], *, now: datetime | None = None) -> str | None:
    """The status a reader should act on: an active consent whose period has ended is
    ``expired`` (it authorizes nothing, as ``_permitting`` decides in SQL)."""
    status = consent.get("status")
    end = ((consent.get("provision") or {}).get("period") or {}).get("end")
    if status == "active" and isinstance(end, str):
        found = parse_range(end)
        if found is not None and found[1] < (now or datetime.now(UTC)):
            return "expired"
    return status


def consent_view(consent: dict[str, Any]) -> dict[str, Any]:
    provision = consent.get("provision") or {}
    return {
        "consent_id": consent.get("id"),
        "patient_id": str((consent.get("patient") or {}).get("reference", "")).removeprefix(
            "Patient/"
        ),
        "status": consent_status(consent),
        "signed_at": consent.get("dateTime"),
        "recipients": [
            (a.get("reference") or {}).get("reference") for a in provision.get("actor", [])
        ],
        "purposes": [p.get("code") for p in provision.get("purpose", [])],
        "expires": (provision.get("period") or {}).get("end"),
    }


@traced_workflow(
    "workflow.revoke_consent", resource_type="Consent", interaction="update", id_position=1
)
async def revoke_consent(ctx: WorkflowContext, consent_id: str, *, reason: str) -> dict[str, Any]:
    """Takes effect for the very next request: every check reads the current Consent."""

    async with write_transaction(ctx.engine) as conn:
        # Locked, then read: a second revocation (a retry, a double click) waits and then finds
        # the Consent inactive, instead of failing on its version.
        stored = await wf.read_in(conn, ctx, "Consent", consent_id, lock=True)
        consent = orjson.loads(stored.raw or "{}")
        # The program holding the records (the custodian) can always revoke; so can the
        # organization that recorded it (a recipient's copy authorizes nothing, but its
        # author may still mark it inactive).
        custodians = {o.get("reference") for o in consent.get("organization", [])}
        recorder = await repo.index_value(
            conn, "Consent", consent_id, stored.version_id, "_creator-org"
        )
        if ctx.organization not in custodians | {recorder} and not (
            ctx.principal and ctx.principal.is_admin
        ):
            raise ForbiddenError(
                "Only the program that holds the records (the consent's organization) or the "
                "organization that recorded the consent can revoke it"
            )
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
