"""Directory entries name their services in the shared vocabulary (``fhir.service_codes``)."""

from __future__ import annotations

from service.errors import BusinessRuleError
from service.fhir.codes import SERVICE_SYSTEM
from service.fhir.service_codes import (
    CHARACTERISTIC_SYSTEM,
    CHARACTERISTICS,
    SERVICE_VALUE_SET,
    directory_codes,
)
from service.workflows.rules import RuleSet, WriteEvent


async def _known_codes(event: WriteEvent) -> None:
    """A HealthcareService's codes from our systems must exist there: a misspelt service type
    would never be found by the referrals that ask for it."""
    body = event.body
    if body is None:
        return
    for index, concept in enumerate(body.get("type") or []):
        for coding in concept.get("coding") or [] if isinstance(concept, dict) else []:
            if coding.get("system") == SERVICE_SYSTEM and coding.get("code") not in (
                directory_codes()
            ):
                raise BusinessRuleError(
                    f"HealthcareService.type[{index}]: '{coding.get('code')}' is not in "
                    f"{SERVICE_VALUE_SET}; use one of: {', '.join(directory_codes())}",
                    expression=[f"HealthcareService.type[{index}]"],
                )
    for index, concept in enumerate(body.get("characteristic") or []):
        for coding in concept.get("coding") or [] if isinstance(concept, dict) else []:
            if coding.get("system") == CHARACTERISTIC_SYSTEM and coding.get("code") not in (
                CHARACTERISTICS
            ):
                raise BusinessRuleError(
                    f"HealthcareService.characteristic[{index}]: '{coding.get('code')}' is not "
                    f"in {CHARACTERISTIC_SYSTEM}; use one of: {', '.join(CHARACTERISTICS)}",
                    expression=[f"HealthcareService.characteristic[{index}]"],
                )


def register(rules: RuleSet) -> None:
    rules.on_write("HealthcareService", _known_codes)
