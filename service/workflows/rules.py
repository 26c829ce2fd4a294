"""Per-type write rules, applied to every write path (REST, transaction/batch, /v1 APIs).

A rule runs inside the write transaction after structural validation. It may reject the write
(``BusinessRuleError``, ``ForbiddenError``...), adjust the body the server stores (e.g. add
security labels), and register follow-up writes (e.g. score Observations). Later features add
their rules in ``register_default_rules``; nothing registers at import time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from service.fhir import catalogue
from service.storage.repository import StoredResource

if TYPE_CHECKING:
    from service.workflows.context import WorkflowContext

Interaction = Literal["create", "update", "patch", "delete"]


@dataclass
class WriteEvent:
    conn: AsyncConnection
    ctx: WorkflowContext
    interaction: Interaction
    resource_type: str
    resource_id: str
    body: dict[str, Any] | None  # the new version (None for delete); rules may edit it
    current: StoredResource | None  # the version being replaced, if any
    current_body: dict[str, Any] | None


@dataclass
class WrittenEvent:
    conn: AsyncConnection
    ctx: WorkflowContext
    interaction: Interaction
    stored: StoredResource
    body: dict[str, Any] | None
    previous_body: dict[str, Any] | None


BeforeWrite = Callable[[WriteEvent], Awaitable[None]]
AfterWrite = Callable[[WrittenEvent], Awaitable[None]]
# Whether an organization may make this change to directory data of its own (an update of
# ``current`` into ``new``): True lets a non-administrator write it (workflows.access).
OwnerMaintains = Callable[[str, dict[str, Any], dict[str, Any]], bool]


@dataclass
class RuleSet:
    before: dict[str, list[BeforeWrite]] = field(default_factory=dict)
    after: dict[str, list[AfterWrite]] = field(default_factory=dict)
    # Types only the server writes (AuditEvent): clients may read and search, never write.
    server_written: set[str] = field(default_factory=set)
    # Types that may not be deleted (audit and consent records are kept).
    undeletable: set[str] = field(default_factory=set)
    # Types whose updates must carry If-Match.
    if_match_required: set[str] = field(default_factory=set)
    # Directory types an organization maintains parts of itself (a HealthcareService's
    # accepting-new-patients flag, by the organization that provides it).
    owner_maintained: dict[str, OwnerMaintains] = field(default_factory=dict)

    def on_write(self, resource_type: str, rule: BeforeWrite) -> None:
        self.before.setdefault(resource_type, []).append(rule)

    def on_written(self, resource_type: str, rule: AfterWrite) -> None:
        self.after.setdefault(resource_type, []).append(rule)


def default_rules() -> RuleSet:
    return RuleSet(
        server_written=set(catalogue.names(server_written=True)),
        undeletable=set(catalogue.names(deletable=False)),
        if_match_required=set(catalogue.names(if_match_required=True)),
    )
