"""The input of a Patient operation ($match, $merge): a FHIR Parameters resource."""

from __future__ import annotations

from typing import Any

from service.errors import InvalidRequestError


def parameters_of(body: Any, operation: str) -> list[Any]:
    """``Parameters.parameter`` of the body (empty when absent); 400 unless the body is a
    Parameters resource and its parameters an array."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequestError(
            f"{operation} takes a Parameters resource", expression=["Parameters"]
        )
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise InvalidRequestError(
            "Parameters.parameter must be an array of parameters",
            expression=["Parameters.parameter"],
        )
    return parameters
