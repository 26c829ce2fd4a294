"""The search parameters Handoff supports, per resource type (R4 definitions, plus the SDOH
Clinical Care IG's custom Task ``output`` and ServiceRequest ``supporting-info``).

Paths are dotted element paths (a tiny subset of FHIRPath that covers these definitions):
``restriction.period`` walks objects and flattens lists; choice elements are listed per type
(``occurrenceDateTime``, ``occurrencePeriod``). Keeping them as data lets one extractor fill
the index for every type and lets the CapabilityStatement list exactly what is supported.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Kind = Literal["token", "reference", "string", "date", "uri", "number", "special"]


@dataclass(frozen=True)
class SearchParam:
    name: str
    kind: Kind
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference target types
    description: str = ""
    # Only references to ``targets`` are indexed: the definition's ``where(resolve() is …)``
    # (e.g. AuditEvent's ``patient`` is ``entity.what`` that is a Patient, not every entity).
    targets_only: bool = False
    # Served by another parameter's rows, those that reference the given target type:
    # AuditEvent's ``patient`` is its ``entity`` references to Patients, indexed once as
    # ``entity`` (a provider's page AuditEvent would otherwise index each patient twice).
    stored_as: tuple[str, str] | None = None

    @property
    def index_name(self) -> str:
        """The ``param`` of the index rows that hold this parameter's values."""
        return self.stored_as[0] if self.stored_as else self.name

    @property
    def index_target(self) -> str | None:
        """The type those rows must reference (None: any)."""
        return self.stored_as[1] if self.stored_as else None


def _p(name: str, kind: Kind, *paths: str, targets: tuple[str, ...] = ()) -> SearchParam:
    return SearchParam(name=name, kind=kind, paths=paths, targets=targets)


_PATIENT = ("Patient",)


def _patient(*paths: str) -> SearchParam:
    """R4's ``patient`` parameters: the path's references that are Patients."""
    return SearchParam(
        name="patient", kind="reference", paths=paths, targets=_PATIENT, targets_only=True
    )


_APPOINTMENT_ACTORS = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
    "Device",
    "HealthcareService",
    "Location",
)
_ORG_ROLE = ("Organization", "PractitionerRole", "Practitioner", "Patient", "RelatedPerson")
_ANY = (
    "Patient",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "HealthcareService",
    "Location",
    "Questionnaire",
    "QuestionnaireResponse",
    "Observation",
    "ServiceRequest",
    "Task",
    "Procedure",
    "Consent",
    "RelatedPerson",
    "MedicationDispense",
    "SupplyDelivery",
    "Medication",
    "Group",
    "Device",
    "DocumentReference",
    "Encounter",
    "Appointment",
)

# Parameters every resource type has. ``_id`` and ``_lastUpdated`` are answered from the
# ``resource`` table itself; the rest are indexed like any other parameter.
COMMON: tuple[SearchParam, ...] = (
    _p("_id", "token"),
    _p("_lastUpdated", "date"),
    _p("_tag", "token", "meta.tag"),
    _p("_security", "token", "meta.security"),
    _p("_profile", "uri", "meta.profile"),
)

BY_TYPE: dict[str, tuple[SearchParam, ...]] = {
    "Task": (
        _p("owner", "reference", "owner", targets=_ORG_ROLE),
        _p("requester", "reference", "requester", targets=_ORG_ROLE),
        _p("status", "token", "status"),
        _p("business-status", "token", "businessStatus"),
        _p("focus", "reference", "focus", targets=_ANY),
        _patient("for"),
        _p("subject", "reference", "for", targets=_ANY),
        _p("code", "token", "code"),
        _p("intent", "token", "intent"),
        _p("identifier", "token", "identifier"),
        _p("part-of", "reference", "partOf", targets=("Task",)),
        _p("based-on", "reference", "basedOn", targets=_ANY),
        _p("authored-on", "date", "authoredOn"),
        _p("modified", "date", "lastModified"),
        _p("period", "date", "executionPeriod"),
        _p("priority", "token", "priority"),
        _p("output", "reference", "output.valueReference", targets=_ANY),
    ),
    "ServiceRequest": (
        _patient("subject"),
        _p("subject", "reference", "subject", targets=_ANY),
        _p("status", "token", "status"),
        _p("intent", "token", "intent"),
        _p("category", "token", "category"),
        _p("code", "token", "code"),
        _p("requester", "reference", "requester", targets=_ORG_ROLE),
        _p("performer", "reference", "performer", targets=(*_ORG_ROLE, "HealthcareService")),
        _p("authored", "date", "authoredOn"),
        _p(
            "occurrence", "date", "occurrenceDateTime", "occurrencePeriod", "occurrenceTiming.event"
        ),
        _p("identifier", "token", "identifier"),
        _p("based-on", "reference", "basedOn", targets=_ANY),
        _p("supporting-info", "reference", "supportingInfo", targets=_ANY),
        _p("encounter", "reference", "encounter", targets=("Encounter",)),
    ),
    "Encounter": (
        _patient("subject"),
        _p("subject", "reference", "subject", targets=_ANY),
        _p("status", "token", "status"),
        _p("class", "token", "class"),
        _p("type", "token", "type"),
        _p("identifier", "token", "identifier"),
        _p("date", "date", "period"),
        _p("location", "reference", "location.location", targets=("Location",)),
        _p("location-period", "date", "location.period"),
        _p("service-provider", "reference", "serviceProvider", targets=("Organization",)),
        _p("reason-code", "token", "reasonCode"),
    ),
    "QuestionnaireResponse": (
        _patient("subject"),
        _p("subject", "reference", "subject", targets=_ANY),
        _p("questionnaire", "reference", "questionnaire", targets=("Questionnaire",)),
        _p("status", "token", "status"),
        _p("authored", "date", "authored"),
        _p("author", "reference", "author", targets=_ORG_ROLE),
        _p("identifier", "token", "identifier"),
    ),
    "Observation": (
        _patient("subject"),
        _p("subject", "reference", "subject", targets=_ANY),
        _p("code", "token", "code"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        _p("category", "token", "category"),
        _p("derived-from", "reference", "derivedFrom", targets=_ANY),
        _p("status", "token", "status"),
        _p("identifier", "token", "identifier"),
    ),
    "Questionnaire": (
        _p("url", "uri", "url"),
        _p("version", "token", "version"),
        _p("name", "string", "name"),
        _p("title", "string", "title"),
        _p("status", "token", "status"),
        _p("code", "token", "code", "item.code"),
        _p("identifier", "token", "identifier"),
    ),
    "Patient": (
        _p("identifier", "token", "identifier"),
        _p("name", "string", "name"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
        _p("birthdate", "date", "birthDate"),
        _p("gender", "token", "gender"),
    ),
    "Organization": (
        _p("name", "string", "name", "alias"),
        _p("identifier", "token", "identifier"),
        _p("type", "token", "type"),
        _p("active", "token", "active"),
        _p("partof", "reference", "partOf", targets=("Organization",)),
    ),
    "HealthcareService": (
        _p("organization", "reference", "providedBy", targets=("Organization",)),
        _p("service-type", "token", "type"),
        _p("specialty", "token", "specialty"),
        _p("location", "reference", "location", targets=("Location",)),
        _p("active", "token", "active"),
        _p("name", "string", "name"),
        _p("identifier", "token", "identifier"),
        _p("service-category", "token", "category"),
        # Directory (service.features.directory): R4's characteristic, R5's communication, and
        # eligibility text (no R4 parameter).
        _p("characteristic", "token", "characteristic"),
        _p("communication", "token", "communication"),
        _p("eligibility", "string", "eligibility.code", "eligibility.comment"),
        _p("program", "token", "program"),
    ),
    "Location": (
        _p("name", "string", "name", "alias"),
        _p("address", "string", "address"),
        _p("address-city", "string", "address.city"),
        _p("address-state", "string", "address.state"),
        _p("address-postalcode", "string", "address.postalCode"),
        _p("organization", "reference", "managingOrganization", targets=("Organization",)),
        _p("identifier", "token", "identifier"),
        _p("status", "token", "status"),
        _p("type", "token", "type"),
        _p("partof", "reference", "partOf", targets=("Location",)),
        # R4 Location.near: [latitude]|[longitude]|[distance]|[units] (search.near).
        _p("near", "special", "position"),
    ),
    "Practitioner": (
        _p("name", "string", "name"),
        _p("identifier", "token", "identifier"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
    ),
    "PractitionerRole": (
        _p("organization", "reference", "organization", targets=("Organization",)),
        _p("practitioner", "reference", "practitioner", targets=("Practitioner",)),
        _p("role", "token", "code"),
        _p("identifier", "token", "identifier"),
        _p("specialty", "token", "specialty"),
    ),
    "Procedure": (
        _patient("subject"),
        _p("subject", "reference", "subject", targets=_ANY),
        _p("based-on", "reference", "basedOn", targets=_ANY),
        _p("status", "token", "status"),
        _p("code", "token", "code"),
        _p("date", "date", "performedDateTime", "performedPeriod"),
        _p("performer", "reference", "performer.actor", targets=_ORG_ROLE),
        _p("identifier", "token", "identifier"),
    ),
    "Consent": (
        _patient("patient"),
        _p("status", "token", "status"),
        _p("category", "token", "category"),
        _p("date", "date", "dateTime"),
        _p("actor", "reference", "provision.actor.reference", targets=_ORG_ROLE),
        _p("source-reference", "reference", "sourceReference", targets=_ANY),
        _p("organization", "reference", "organization", targets=("Organization",)),
        _p("period", "date", "provision.period"),
        _p("purpose", "token", "provision.purpose"),
        _p("identifier", "token", "identifier"),
    ),
    "AuditEvent": (
        _p("date", "date", "recorded"),
        _p("agent", "reference", "agent.who", targets=(*_ORG_ROLE, "Device")),
        _p("entity", "reference", "entity.what", targets=_ANY),
        SearchParam(
            name="patient",
            kind="reference",
            paths=("entity.what",),
            targets=_PATIENT,
            targets_only=True,
            stored_as=("entity", "Patient"),
        ),
        _p("type", "token", "type"),
        _p("subtype", "token", "subtype"),
        _p("outcome", "token", "outcome"),
        _p("action", "token", "action"),
        _p("purpose", "token", "purposeOfEvent"),
        _p("request-id", "token", "entity.what.identifier"),
    ),
    "CodeSystem": (
        _p("url", "uri", "url"),
        _p("version", "token", "version"),
        _p("name", "string", "name"),
        _p("status", "token", "status"),
    ),
    "ValueSet": (
        _p("url", "uri", "url"),
        _p("version", "token", "version"),
        _p("name", "string", "name"),
        _p("status", "token", "status"),
    ),
    "RelatedPerson": (
        _patient("patient"),
        _p("name", "string", "name"),
        _p("identifier", "token", "identifier"),
        _p("relationship", "token", "relationship"),
    ),
    "MedicationDispense": (
        _patient("subject"),
        _p("subject", "reference", "subject", targets=_ANY),
        _p("status", "token", "status"),
        _p("code", "token", "medicationCodeableConcept"),
        _p("performer", "reference", "performer.actor", targets=_ORG_ROLE),
        _p("receiver", "reference", "receiver", targets=_ORG_ROLE),
        _p("whenhandedover", "date", "whenHandedOver"),
        _p("destination", "reference", "destination", targets=("Location",)),
        _p("identifier", "token", "identifier"),
    ),
    "Medication": (
        _p("code", "token", "code"),
        _p("identifier", "token", "identifier"),
    ),
    "SupplyDelivery": (
        _patient("patient"),
        _p("status", "token", "status"),
        _p("supplier", "reference", "supplier", targets=_ORG_ROLE),
        _p("receiver", "reference", "receiver", targets=_ORG_ROLE),
        _p("identifier", "token", "identifier"),
        _p("date", "date", "occurrenceDateTime", "occurrencePeriod"),
    ),
    # R4 Appointment: ``patient``, ``practitioner`` and ``location`` are the participants'
    # actors of that type; ``date`` is ``start``.
    "Appointment": (
        _patient("participant.actor"),
        _p("actor", "reference", "participant.actor", targets=_APPOINTMENT_ACTORS),
        SearchParam(
            name="location",
            kind="reference",
            paths=("participant.actor",),
            targets=("Location",),
            targets_only=True,
        ),
        SearchParam(
            name="practitioner",
            kind="reference",
            paths=("participant.actor",),
            targets=("Practitioner",),
            targets_only=True,
        ),
        _p("date", "date", "start"),
        _p("status", "token", "status"),
        _p("part-status", "token", "participant.status"),
        _p("based-on", "reference", "basedOn", targets=("ServiceRequest",)),
        _p("identifier", "token", "identifier"),
        _p("appointment-type", "token", "appointmentType"),
        _p("service-type", "token", "serviceType"),
    ),
    "Communication": (
        _patient("subject"),
        _p("subject", "reference", "subject", targets=_ANY),
        _p("status", "token", "status"),
        _p("category", "token", "category"),
        _p("medium", "token", "medium"),
        _p("sent", "date", "sent"),
        _p("received", "date", "received"),
        _p("based-on", "reference", "basedOn", targets=_ANY),
        _p("sender", "reference", "sender", targets=_ANY),
        _p("recipient", "reference", "recipient", targets=_ANY),
        _p("identifier", "token", "identifier"),
    ),
    "PlanDefinition": (
        _p("url", "uri", "url"),
        _p("version", "token", "version"),
        _p("name", "string", "name"),
        _p("title", "string", "title"),
        _p("status", "token", "status"),
        _p("identifier", "token", "identifier"),
        _p("date", "date", "date"),
        _p("type", "token", "type"),
        _p("context-reference", "reference", "useContext.valueReference", targets=_ANY),
    ),
    "Subscription": (
        _p("status", "token", "status"),
        _p("criteria", "string", "criteria"),
        _p("type", "token", "channel.type"),
        _p("url", "uri", "channel.endpoint"),
        _p("payload", "token", "channel.payload"),
    ),
}


@functools.lru_cache(maxsize=128)
def params_for(resource_type: str) -> Mapping[str, SearchParam]:
    """Every parameter of a type, common ones included, by name (read-only: shared)."""
    found = {p.name: p for p in COMMON}
    found.update({p.name: p for p in BY_TYPE.get(resource_type, ())})
    return MappingProxyType(found)


def can_target(param: SearchParam, resource_type: str) -> bool:
    """Whether a reference parameter's values may name ``resource_type``."""
    return not param.targets or resource_type in param.targets


@functools.lru_cache(maxsize=128)
def indexed_params(resource_type: str) -> tuple[SearchParam, ...]:
    """Parameters whose values go into ``search_index`` under their own name (``_id`` and
    ``_lastUpdated`` are columns; ``stored_as`` parameters use another one's rows)."""
    return tuple(
        p
        for p in (*COMMON, *BY_TYPE.get(resource_type, ()))
        if p.name not in {"_id", "_lastUpdated"} and p.stored_as is None
    )
