"""What every use case needs to know about the request, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from service.search.execute import AccessFilter, allow_all
from service.settings import Settings
from service.workflows.rules import RuleSet, default_rules

if TYPE_CHECKING:
    from service.auth.principal import Principal


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
