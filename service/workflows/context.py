"""What every use case needs to know about the request, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.search.execute import AccessFilter, allow_all
from service.settings import Settings
from service.workflows.rules import RuleSet, default_rules

if TYPE_CHECKING:
    from service.auth.principal import Principal


@dataclass
class AuditNotes:
    """What the request's AuditEvent records, as the use cases learn it (workflows.audit)."""

    interaction: str | None = None  # read, vread, search-type, create, ... (the first one set)
    target: str | None = None  # the resource a failed request was after, "Type/id"
    search: tuple[str, list[tuple[str, str]]] | None = None  # (type, parameters) of a search
    written: bool = False  # its writes recorded their own AuditEvents
    done: bool = False  # the request's AuditEvent is recorded


@dataclass
class WorkflowContext:
    engine: AsyncEngine
    settings: Settings
    base_url: str  # public FHIR base, e.g. https://handoff.example.org/fhir
    request_id: str
    principal: Principal | None = None
    access: AccessFilter = field(default=allow_all)  # reads and includes (scope action "r")
    search_access: AccessFilter | None = None  # searches (scope action "s"); None: ``access``
    write_access: AccessFilter | None = None  # targets of update/patch/delete; None: ``access``
    rules: RuleSet = field(default_factory=default_rules)
    # The organization a server-made write is recorded for when there is no principal
    # (derived Observations keep the creator of their QuestionnaireResponse).
    on_behalf_of: str | None = None
    # 42 CFR Part 2: the request's purpose of use (v3-ActReason) and, for the medical-emergency
    # exception ("break the glass"), the reason the caller stated.
    purpose: str = "TREAT"
    emergency_reason: str | None = None
    # Audit: whether this context records AuditEvents (not for start-up seeding), and the
    # resources this request read (filled where results are disclosed: workflows/consents.py).
    audit: bool = True
    accessed: list[Any] = field(default_factory=list)
    # The basis on which each labelled referral version in ``accessed`` was shown, as
    # workflows.disclosure decided it: (type, id, version) -> "consent Consent/1", "author"...
    disclosure_bases: dict[tuple[str, str, int], str] = field(default_factory=dict)
    # The versions this request wrote, (type, id, version): kept with an Idempotency-Key's
    # response, so that a replay's AuditEvent names what it shows again.
    written: list[tuple[str, str, int]] = field(default_factory=list)
    # Results computed by write rules that the use case reports back (e.g. scores).
    outcomes: dict[str, Any] = field(default_factory=dict)
    audit_notes: AuditNotes = field(default_factory=AuditNotes)

    @property
    def organization(self) -> str | None:
        return self.principal.organization if self.principal else self.on_behalf_of
