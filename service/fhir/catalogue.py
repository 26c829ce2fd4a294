"""The resource types this server stores, one record each: everything a type's behaviour
depends on, decided in one place.

Adding a type means adding its record here, its search parameters (``search.params``) and, if
it has required bindings, regenerating ``fhir/bindings.py`` (``tools/gen_r4_bindings.py``);
``tests/unit/fhir/test_catalogue.py`` fails until each of those is decided.

Tenancy (``workflows.access``) of each kind:

* ``directory``: readable by every authenticated client, written only by administrators;
* ``referral``: visible to the parties of the referral (requester, owner or performer, the
  parties of the Tasks that focus on it) and its creator; an Appointment to its creator and
  the parties of the Tasks of the referral it is ``basedOn``;
* ``patient``: the person: its creator and the parties of any Task for it;
* ``patient-data``: records about a person: their creator and the parties of any Task for the
  person (a Consent also to its custodian);
* ``creator``: only the organization that created it.

42 CFR Part 2 (``workflows.consents``, ``workflows.disclosure``) of each kind:

* ``guarded``: labelled records are all or nothing (404 without the author's consent);
* ``referral``: labelled records are shown by parts, each to its author and under its
  author's consent (``workflows.disclosure``);
* ``none``: not Part 2 records themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Tenancy = Literal["directory", "referral", "patient", "patient-data", "creator"]
Part2 = Literal["guarded", "referral", "none"]


@dataclass(frozen=True)
class TypeRecord:
    name: str
    tenancy: Tenancy
    part2: Part2 = "none"
    server_written: bool = False  # clients read and search it, never write it
    deletable: bool = True
    if_match_required: bool = False  # updates must carry If-Match (concurrent workflow writes)
    # Elements whose references pass Part 2 labels on: a record derived from, or acting on, a
    # labelled one is labelled too (workflows.consents.label_on_write).
    labels_from: tuple[str, ...] = ()


CATALOGUE: Final[tuple[TypeRecord, ...]] = (
    TypeRecord("Patient", "patient"),
    TypeRecord("Organization", "directory"),
    TypeRecord("Practitioner", "directory"),
    TypeRecord("PractitionerRole", "directory"),
    TypeRecord("HealthcareService", "directory"),
    TypeRecord("Location", "directory"),
    TypeRecord("Questionnaire", "directory"),
    TypeRecord("QuestionnaireResponse", "patient-data", "guarded"),
    TypeRecord("Observation", "patient-data", "guarded", labels_from=("derivedFrom", "focus")),
    TypeRecord(
        "ServiceRequest", "referral", "referral", if_match_required=True, labels_from=("basedOn",)
    ),
    TypeRecord(
        "Task", "referral", "referral", if_match_required=True, labels_from=("focus", "basedOn")
    ),
    TypeRecord("Procedure", "patient-data", "guarded", labels_from=("basedOn",)),
    # Consents are revoked (status inactive), never deleted: the accounting needs them.
    TypeRecord("Consent", "patient-data", deletable=False),
    TypeRecord("AuditEvent", "creator", server_written=True, deletable=False),
    TypeRecord("CodeSystem", "directory"),
    TypeRecord("ValueSet", "directory"),
    TypeRecord("MedicationDispense", "patient-data", "guarded"),
    TypeRecord("Medication", "directory"),
    TypeRecord("SupplyDelivery", "patient-data", "guarded"),
    TypeRecord("RelatedPerson", "patient-data"),
    # Notifications (features.subscriptions): each organization sees only its own.
    TypeRecord("Subscription", "creator"),
    # A custody stay (booking to release): where and when a person was held, not what they were
    # treated for, so not a Part 2 record; seen by its creator and the parties of a referral
    # for the person (the release is what the handoff is anchored on).
    TypeRecord("Encounter", "patient-data"),
    # An appointment the receiving organization books for a referral (``basedOn`` its
    # ServiceRequest): at an SUD program it discloses SUD treatment, so it is labelled from the
    # referral and shown by parts like the referral itself (its author is its creator).
    TypeRecord("Appointment", "referral", "referral", labels_from=("basedOn",)),
    # A program's follow-up plan after release (features.followups): its creator's; the
    # built-in default (no creator) is read by every organization, written by none.
    TypeRecord("PlanDefinition", "creator"),
    # A program's contact log after release (features.contacts): only its own organization
    # sees it; labelled from the follow-up Task it completes.
    TypeRecord("Communication", "creator", labels_from=("basedOn",)),
)
BY_NAME: Final[dict[str, TypeRecord]] = {record.name: record for record in CATALOGUE}


def names(**where: object) -> frozenset[str]:
    """The types whose records have every attribute given, e.g. ``names(tenancy="directory")``."""
    return frozenset(
        r.name for r in CATALOGUE if all(getattr(r, key) == value for key, value in where.items())
    )
