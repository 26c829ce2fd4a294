"""People as the justice system knows them: match or create the Patient by the jail's own
identifiers (person id, booking number), scoped to the organization that assigned them, or to
the person-identifier domain an administrator declared it part of (a county jail and its
health unit share the JMS person id: their records of a person land on one Patient)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError, Issue
from service.search.execute import allow_all
from service.storage import repository as repo
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

SID_BASE = "https://handoff.dev/fhir/sid"
# On an Organization (set by an administrator): the person-identifier domain it belongs to.
DOMAIN_EXTENSION = "https://handoff.dev/fhir/StructureDefinition/person-identifier-domain"


def _namespace(organization: str, domain: str | None) -> str:
    return f"domain/{domain}" if domain else organization.split("/", 1)[-1]


def person_id_system(organization: str, domain: str | None = None) -> str:
    return f"{SID_BASE}/{_namespace(organization, domain)}/person-id"


def booking_system(organization: str, domain: str | None = None) -> str:
    return f"{SID_BASE}/{_namespace(organization, domain)}/booking-number"


def domain_of_organization(body: dict[str, Any]) -> str | None:
    for ext in body.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == DOMAIN_EXTENSION:
            value = ext.get("valueString")
            return value if isinstance(value, str) and value else None
    return None


async def identifier_domain(conn: AsyncConnection, organization: str) -> str | None:
    """The person-identifier domain ``organization`` belongs to, if an administrator declared
    one (service.features.identity)."""
    rtype, _, rid = organization.partition("/")
    if rtype != "Organization":
        return None
    stored = await repo.get_current(conn, "Organization", rid)
    if stored is None or stored.deleted or stored.raw is None:
        return None
    return domain_of_organization(orjson.loads(stored.raw))


@dataclass
class Person:
    """What a JMS knows about a person (already validated by the API layer)."""

    person_id: str | None
    booking_number: str | None
    family_name: str
    given_names: list[str]
    birth_date: str
    sex: str
    phone: str | None = None
    address: dict[str, Any] | None = None
    extra_identifiers: list[dict[str, str]] = field(default_factory=list)
    # A Patient the caller received (a party to a referral refers to the person it was sent).
    patient_id: str | None = None


def _patient_body(
    person: Person, organization: str, base: dict[str, Any] | None, domain: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = dict(base or {"resourceType": "Patient"})
    identifiers = [i for i in body.get("identifier", []) if isinstance(i, dict)]
    wanted = []
    if person.person_id:
        wanted.append(
            {
                "use": "usual",
                "system": person_id_system(organization, domain),
                "value": person.person_id,
            }
        )
    if person.booking_number:
        wanted.append(
            {
                "use": "secondary",
                "system": booking_system(organization, domain),
                "value": person.booking_number,
            }
        )
    for ident in wanted:
        if not any(
            i.get("system") == ident["system"] and i.get("value") == ident["value"]
            for i in identifiers
        ):
            identifiers.append(ident)
    body["identifier"] = identifiers
    body["name"] = [{"use": "official", "family": person.family_name, "given": person.given_names}]
    body["birthDate"] = person.birth_date
    body["gender"] = person.sex
    telecom = [t for t in body.get("telecom", []) if t.get("system") != "phone"]
    if person.phone:
        telecom.append({"system": "phone", "value": person.phone, "use": "mobile"})
    if telecom:
        body["telecom"] = telecom
    else:
        body.pop("telecom", None)
    if person.address:
        body["address"] = [person.address]
    return body


def _value_of(stored: Any, system: str) -> str | None:
    body = orjson.loads(stored.raw or "{}")
    for ident in body.get("identifier", []):
        if isinstance(ident, dict) and ident.get("system") == system:
            value = ident.get("value")
            return value if isinstance(value, str) else None
    return None


async def match_or_create_patient(
    conn: AsyncConnection, ctx: WorkflowContext, person: Person
) -> tuple[str, bool]:
    """The Patient id for ``person`` (created or brought up to date); True if created.

    A ``person_id`` that finds a Patient wins: a booking number never moves a record to
    another person. A booking number held by a Patient with another person id, or a person id
    and a booking number that find two different Patients, is a conflict (422 naming both).
    In a person-identifier domain the match sees every Patient of the domain's identifiers:
    the administrator's declaration is what lets its organizations share the person."""
    organization = ctx.organization
    if organization is None:
        raise BusinessRuleError("Only a client acting for an organization can record people")
    if person.patient_id:
        # Access-checked: a party to a referral for the person, or its creator, sees it.
        await wf.read_in(conn, ctx, "Patient", person.patient_id)
        return person.patient_id, False
    domain = await identifier_domain(conn, organization)
    pid_system = person_id_system(organization, domain)
    booking = booking_system(organization, domain)
    keys: list[tuple[str, str]] = []  # the person id first: it wins over a booking number
    if person.person_id:
        keys.append((pid_system, person.person_id))
    if person.booking_number:
        keys.append((booking, person.booking_number))
    if not keys:
        raise BusinessRuleError(
            "person needs the jail's person_id or booking_number", expression=["person"]
        )
    await repo.lock_key(conn, f"patient:{keys[0][0]}|{keys[0][1]}")
    # Within a domain, the other organizations' Patients count too (write-side: internal).
    finder = (
        dataclasses.replace(
            ctx,
            principal=None,
            on_behalf_of=organization,
            access=allow_all,
            search_access=None,
            write_access=None,
        )
        if domain
        else ctx
    )
    by_person = (
        await wf.find_by_identifier(conn, finder, "Patient", pid_system, person.person_id)
        if person.person_id
        else []
    )
    by_booking = (
        await wf.find_by_identifier(conn, finder, "Patient", booking, person.booking_number)
        if person.booking_number
        else []
    )
    found = by_person[0] if by_person else None
    held = by_booking[0] if by_booking else None
    if held is not None and person.person_id:
        holder = _value_of(held, pid_system)
        if (found is not None and held.id != found.id) or (
            found is None and holder is not None and holder != person.person_id
        ):
            message = (
                f"booking_number {person.booking_number} belongs to Patient/{held.id}"
                + (f" (person_id {holder})" if holder else "")
                + f", but person_id {person.person_id} is "
                + (f"Patient/{found.id}" if found is not None else "not that person")
                + ": correct the booking number or the person id"
            )
            raise BusinessRuleError(
                message,
                issues=[
                    Issue("error", "business-rule", message, ("person.person_id",)),
                    Issue("error", "business-rule", message, ("person.booking_number",)),
                ],
            )
    found = found or held
    if found is None:
        created = await wf.create_in(conn, ctx, _patient_body(person, organization, None, domain))
        return created.stored.id, True
    # The version current once locked (the match above read without a lock): an update of the
    # Patient committed meanwhile, e.g. through FHIR, must not turn this upsert into a 412.
    locked = await repo.get_current(conn, "Patient", found.id, for_update=True)
    latest = locked if locked is not None and not locked.deleted else found
    current = orjson.loads(latest.raw or "{}")
    updated = _patient_body(person, organization, current, domain)
    if {k: v for k, v in updated.items() if k != "meta"} != {
        k: v for k, v in current.items() if k != "meta"
    }:
        await wf.update_in(conn, finder, "Patient", found.id, updated, if_match=latest.version_id)
    return found.id, False
