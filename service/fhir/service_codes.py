"""One service vocabulary for referrals and the directory.

A referral (``ServiceRequest.orderDetail``) names one service of ``codes.SERVICES``; a directory
entry (``HealthcareService.type``) names the services it offers from the same CodeSystem, or a
grouping concept (``moud``) when it offers the whole group. The CodeSystem is a hierarchy
(``hierarchyMeaning`` ``is-a``): ``service-type:below=moud`` finds every MOUD service, and
``service-type:above=moud-buprenorphine`` also finds entries that only say ``moud``.

Whether a directory entry accepts new patients is a ``HealthcareService.characteristic`` from
``CHARACTERISTIC_SYSTEM``, kept by the organization that provides the service.
"""

from __future__ import annotations

from typing import Any

from service.fhir.codes import (
    HANDOFF,
    SERVICE_GROUPS,
    SERVICE_PARENTS,
    SERVICE_SYSTEM,
    SERVICES,
    code_system,
)

SERVICE_VALUE_SET = f"{HANDOFF}/ValueSet/service-type"
CHARACTERISTIC_SYSTEM = f"{HANDOFF}/CodeSystem/directory-characteristic"
ACCEPTING = "accepting-new-patients"
NOT_ACCEPTING = "not-accepting-new-patients"
CHARACTERISTICS: dict[str, str] = {
    ACCEPTING: "Accepting new patients",
    NOT_ACCEPTING: "Not accepting new patients",
}
NOT_SELECTABLE = "http://hl7.org/fhir/concept-properties#notSelectable"


def directory_codes() -> dict[str, str]:
    """Every code a directory entry may carry: code -> display."""
    out = {k: v[0] for k, v in SERVICE_GROUPS.items()}
    out.update({k: v.display for k, v in SERVICES.items()})
    return out


def _parents() -> dict[str, str]:
    return SERVICE_PARENTS


def below(system: str | None, code: str) -> frozenset[str] | None:
    """``code`` and the codes it subsumes in ``system`` (None: not a hierarchy we hold)."""
    if system not in (None, SERVICE_SYSTEM) or code not in directory_codes():
        return None
    return frozenset({code, *SERVICE_GROUPS.get(code, ("", ()))[1]})


def above(system: str | None, code: str) -> frozenset[str] | None:
    """``code`` and the codes that subsume it in ``system`` (None: not a hierarchy we hold)."""
    if system not in (None, SERVICE_SYSTEM) or code not in directory_codes():
        return None
    out, parent = {code}, _parents().get(code)
    while parent is not None:
        out.add(parent)
        parent = _parents().get(parent)
    return frozenset(out)


def service_coding(code: str) -> dict[str, Any]:
    return {"system": SERVICE_SYSTEM, "code": code, "display": directory_codes()[code]}


def characteristic(accepting: bool) -> dict[str, Any]:
    code = ACCEPTING if accepting else NOT_ACCEPTING
    return {
        "coding": [
            {"system": CHARACTERISTIC_SYSTEM, "code": code, "display": CHARACTERISTICS[code]}
        ]
    }


def accepting_of(body: dict[str, Any]) -> bool | None:
    """The accepting-new-patients flag of a HealthcareService (None: not said)."""
    for concept in body.get("characteristic") or []:
        for coding in concept.get("coding") or [] if isinstance(concept, dict) else []:
            if isinstance(coding, dict) and coding.get("system") == CHARACTERISTIC_SYSTEM:
                if coding.get("code") == ACCEPTING:
                    return True
                if coding.get("code") == NOT_ACCEPTING:
                    return False
    return None


def with_accepting(body: dict[str, Any], accepting: bool | None) -> dict[str, Any]:
    """``body`` with its accepting flag set to ``accepting`` (None: removed)."""
    kept = [c for c in body.get("characteristic") or [] if not _is_flag(c)]
    if accepting is not None:
        kept.append(characteristic(accepting))
    out = {k: v for k, v in body.items() if k != "characteristic"}
    if kept:
        out["characteristic"] = kept
    return out


def _is_flag(concept: Any) -> bool:
    return isinstance(concept, dict) and any(
        isinstance(c, dict) and c.get("system") == CHARACTERISTIC_SYSTEM
        for c in concept.get("coding") or []
    )


def directory_code_systems() -> list[dict[str, Any]]:
    characteristic = code_system(
        "directory-characteristic",
        CHARACTERISTIC_SYSTEM,
        "DirectoryCharacteristic",
        "Characteristics of a directory entry its provider maintains",
        CHARACTERISTICS,
    )
    characteristic["description"] = (
        "HealthcareService.characteristic codes. The organization that provides the service "
        "(HealthcareService.providedBy) sets whether it accepts new patients; administrators and "
        "directory imports keep what it set."
    )
    return [characteristic]


def service_value_set() -> dict[str, Any]:
    return {
        "resourceType": "ValueSet",
        "id": "service-type",
        "url": SERVICE_VALUE_SET,
        "version": "1.0.0",
        "name": "HandoffServiceType",
        "title": "Services offered by directory entries and requested by referrals",
        "status": "active",
        "description": "Every concept of the referral-service CodeSystem. HealthcareService.type "
        "may use any of them; a referral (ServiceRequest.orderDetail) uses the selectable ones "
        "(not the grouping concepts such as 'moud').",
        "compose": {"include": [{"system": SERVICE_SYSTEM}]},
    }
