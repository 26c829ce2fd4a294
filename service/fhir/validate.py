"""TEMPORARY stand-in until the validation branch lands (replaced wholesale)."""

from __future__ import annotations

from typing import Any

from service.errors import InvalidResourceError


def validate_resource(body: Any, *, expected_type: str | None = None) -> None:
    if not isinstance(body, dict) or "resourceType" not in body:
        raise InvalidResourceError("Body must be a JSON object with a resourceType")
    if expected_type and body["resourceType"] != expected_type:
        raise InvalidResourceError(
            f"resourceType {body['resourceType']} does not match {expected_type}"
        )
