"""The route template a request matched (``/fhir/Patient/{resource_id}``), never the raw path."""

from __future__ import annotations

from starlette.types import Scope


def route_template(scope: Scope) -> str | None:
    """Read after the app has run: the router records the matched route in the shared scope.

    None when nothing matched (a 404 for an unknown path) or the request failed before routing.
    """
    fmt = getattr(scope.get("route"), "path_format", None)
    if not isinstance(fmt, str) or not fmt:
        return None
    return f"{scope.get('root_path', '')}{fmt}"
