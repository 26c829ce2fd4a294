"""Dependencies as ``Annotated`` aliases, defined once."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.responses import fhir_base
from service.settings import Settings
from service.workflows.context import WorkflowContext


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_context(request: Request, settings: SettingsDep) -> WorkflowContext:
    state = request.app.state
    return WorkflowContext(
        engine=state.engine,
        settings=settings,
        base_url=fhir_base(request, settings),
        request_id=getattr(request.state, "request_id", ""),
        rules=state.rules,
    )


ContextDep = Annotated[WorkflowContext, Depends(get_context)]
