"""People as the justice system knows them: match or create the Patient by the jail's own
identifiers (person id, booking number), scoped to the organization that assigned them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import BusinessRuleError
from service.storage import repository as repo
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

SID_BASE = "https://handoff.dev/fhir/sid"


def person_id_system(organization: str) -> str:
    return f"{SID_BASE}/{organization.split('/', 1)[-1]}/person-id"


def booking_system(organization: str) -> str:
    return f"{SID_BASE}/{organization.split('/', 1)[-1]}/booking-number"


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


def _patient_body(person: Person, organization: str, base: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = dict(base or {"resourceType": "Patient"})
    identifiers = [i for i in body.get("identifier", []) if isinstance(i, dict)]
    wanted = []
    if person.person_id:
        wanted.append(
            {"use": "usual", "system": person_id_system(organization), "value": person.person_id}
        )
    if person.booking_number:
        wanted.append(
            {
                "use": "secondary",
                "system": booking_system(organization),
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


async def match_or_create_patient(
    conn: AsyncConnection, ctx: WorkflowContext, person: Person
) -> tuple[str, bool]:
    """The Patient id for ``person`` (created or brought up to date); True if created."""
    organization = ctx.organization
    if organization is None:
        raise BusinessRuleError("Only a client acting for an organization can record people")
    keys: list[tuple[str, str]] = []  # the person id first: it wins over a booking number
    if person.person_id:
        keys.append((person_id_system(organization), person.person_id))
    if person.booking_number:
        keys.append((booking_system(organization), person.booking_number))
    if not keys:
        raise BusinessRuleError(
            "person needs the jail's person_id or booking_number", expression=["person"]
        )
    await repo.lock_key(conn, f"patient:{keys[0][0]}|{keys[0][1]}")
    matches = await wf.find_by_first_identifier(conn, ctx, "Patient", keys)
    found = matches[0] if matches else None
    if found is None:
        created = await wf.create_in(conn, ctx, _patient_body(person, organization, None))
        return created.stored.id, True
    # The version current once locked (the match above read without a lock): an update of the
    # Patient committed meanwhile, e.g. through FHIR, must not turn this upsert into a 412.
    locked = await repo.get_current(conn, "Patient", found.id, for_update=True)
    latest = locked if locked is not None and not locked.deleted else found
    current = orjson.loads(latest.raw or "{}")
    updated = _patient_body(person, organization, current)
    if {k: v for k, v in updated.items() if k != "meta"} != {
        k: v for k, v in current.items() if k != "meta"
    }:
        await wf.update_in(conn, ctx, "Patient", found.id, updated, if_match=latest.version_id)
    return found.id, False
