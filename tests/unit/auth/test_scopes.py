from __future__ import annotations

import pytest

from service.auth.errors import InvalidScopeError
from service.auth.scopes import ScopeRule, ScopeSet, ScopeSyntaxError, grant
from service.errors import InsufficientScopeError


def actions_allowed(scopes: ScopeSet, resource_type: str) -> str:
    return "".join(a for a in "cruds" if scopes.allows(resource_type, a))  # type: ignore[arg-type]


# --- grammar -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("system/Task.rs", "rs"),
        ("system/Task.cruds", "cruds"),
        ("system/Task.cu", "cu"),
        ("system/Task.d", "d"),
        ("system/Task.read", "rs"),  # v1
        ("system/Task.write", "cud"),
        ("system/Task.*", "cruds"),
        ("system/*.rs", "rs"),
        ("system/*.*", "cruds"),
    ],
)
def test_system_scopes_grant_their_actions(scope: str, expected: str) -> None:
    scopes = ScopeSet.parse(scope)
    assert actions_allowed(scopes, "Task") == expected


def test_type_scope_does_not_leak_to_other_types() -> None:
    scopes = ScopeSet.parse("system/Task.cruds")
    assert actions_allowed(scopes, "ServiceRequest") == ""
    assert actions_allowed(ScopeSet.parse("system/*.r"), "Consent") == "r"


@pytest.mark.parametrize(
    "scope",
    [
        "system/Task.sr",  # out of order
        "system/Task.rr",
        "system/Task.x",
        "system/Task.",
        "system/task.rs",  # lower-case type
        "system/Task",
        "system/Task.rs?",  # empty constraint
        "system/Task.rs?owner",  # no '='
        "system/Task.rs?owner=",
        "system/Task.rs?owner=a&owner=b",  # repeated parameter
        "system/Task.rs?owner:missing=true",  # modifier
        "system/Task.rs?owner.name=x",  # chain
        "system/Task.read?owner=Organization/1",  # v1 with constraint
        "System/Task.rs",
        "garbage",
    ],
)
def test_malformed_scopes_grant_nothing_and_fail_strict_parsing(scope: str) -> None:
    assert not ScopeSet.parse(scope)
    with pytest.raises(ScopeSyntaxError):
        ScopeSet.parse(scope, strict=True)


@pytest.mark.parametrize(
    "scope",
    ["patient/Task.rs", "user/*.cruds", "user/Patient.read", "openid", "fhirUser", "launch"],
)
def test_non_backend_scopes_are_ignored(scope: str) -> None:
    scopes = ScopeSet.parse(f"{scope} system/Consent.rs")
    assert not scopes.allows("Task", "r")
    assert scopes.allows("Consent", "r")
    assert scopes.to_string() == "system/Consent.rs"
    with pytest.raises(ScopeSyntaxError, match="not granted to backend clients"):
        ScopeSet.parse(scope, strict=True)


def test_admin_scope() -> None:
    scopes = ScopeSet.parse("handoff/admin")
    assert scopes.admin
    assert bool(scopes)
    assert not scopes.allows("Task", "r")
    assert not ScopeSet.parse("system/*.cruds").admin


def test_overlong_scope_string_is_refused() -> None:
    with pytest.raises(ScopeSyntaxError):
        ScopeSet.parse("system/Task.rs " * 1000)


# --- constraints ---------------------------------------------------------------------------


def test_constraint_parsing_and_semantics() -> None:
    scopes = ScopeSet.parse("system/Task.rs?owner=Organization/123&status=requested,accepted")
    assert scopes.allows("Task", "r")
    assert not scopes.allows("Task", "u")
    assert scopes.constraints("Task", "s") == [
        {"owner": ["Organization/123"], "status": ["accepted", "requested"]}
    ]


def test_unconstrained_scope_wins_over_constrained() -> None:
    scopes = ScopeSet.parse("system/Task.rs?owner=Organization/1 system/*.r")
    assert scopes.constraints("Task", "r") == []
    assert scopes.constraints("Task", "s") == [{"owner": ["Organization/1"]}]


def test_several_constrained_scopes_are_alternatives() -> None:
    scopes = ScopeSet.parse(
        "system/Task.rs?owner=Organization/1 system/Task.rs?requester=Organization/1"
    )
    assert scopes.constraints("Task", "r") == [
        {"owner": ["Organization/1"]},
        {"requester": ["Organization/1"]},
    ]
    assert scopes.matches_resource("Task", "r", {"requester": "Organization/1"})
    assert scopes.matches_resource("Task", "r", {"owner": ["Organization/2", "Organization/1"]})
    assert not scopes.matches_resource("Task", "r", {"owner": "Organization/2"})


def test_constraints_raise_when_nothing_is_allowed() -> None:
    scopes = ScopeSet.parse("system/Task.rs")
    with pytest.raises(InsufficientScopeError):
        scopes.constraints("Task", "u")
    with pytest.raises(InsufficientScopeError):
        scopes.constraints("Consent", "r")


def test_matches_resource_requires_every_parameter() -> None:
    scopes = ScopeSet.parse("system/Task.rus?owner=Organization/123&status=requested,accepted")
    ok = {"owner": ["Organization/123"], "status": ["requested"]}
    assert scopes.matches_resource("Task", "u", ok)
    assert not scopes.matches_resource("Task", "u", {**ok, "status": ["completed"]})
    assert not scopes.matches_resource("Task", "u", {"status": ["requested"]})  # no owner
    assert not scopes.matches_resource("Task", "u", {**ok, "owner": None})
    assert not scopes.matches_resource("Task", "d", ok)  # action not granted
    assert not scopes.matches_resource("ServiceRequest", "r", ok)


def test_matches_resource_token_without_system_matches_any_system() -> None:
    scopes = ScopeSet.parse("system/Task.r?status=requested")
    assert scopes.matches_resource(
        "Task", "r", {"status": "http://hl7.org/fhir/task-status|requested"}
    )
    assert not scopes.matches_resource("Task", "r", {"status": "http://x|notrequested"})
    with_system = ScopeSet.parse("system/Task.r?status=http://s|requested")
    assert not with_system.matches_resource("Task", "r", {"status": "http://other|requested"})


def test_unconstrained_scope_matches_any_resource() -> None:
    assert ScopeSet.parse("system/Task.r").matches_resource("Task", "r", {})


def test_percent_encoded_values_round_trip() -> None:
    scopes = ScopeSet.parse("system/Task.r?identifier=urn:x%7Ca%2Cb")
    assert scopes.constraints("Task", "r") == [{"identifier": ["urn:x|a,b"]}]
    text = scopes.to_string()
    assert ScopeSet.parse(text) == scopes
    assert "%2C" in text


# --- normalization and to_string -----------------------------------------------------------


def test_to_string_is_v2_and_stable() -> None:
    scopes = ScopeSet.parse("system/Task.read system/Task.write handoff/admin system/Consent.rs")
    assert scopes.to_string() == "system/Consent.rs system/Task.cruds handoff/admin"
    assert ScopeSet.parse(scopes.to_string()) == scopes


def test_covered_rules_are_dropped() -> None:
    scopes = ScopeSet.parse("system/*.rs system/Task.r system/Task.r?owner=Organization/1")
    assert scopes.to_string() == "system/*.rs"


def test_narrower_constraint_is_covered_by_wider() -> None:
    scopes = ScopeSet.parse(
        "system/Task.r?owner=Organization/1,Organization/2 "
        "system/Task.r?owner=Organization/1&status=requested"
    )
    assert scopes.to_string() == "system/Task.r?owner=Organization/1,Organization/2"


# --- grant ---------------------------------------------------------------------------------


@pytest.mark.parametrize("registered", ["system/Task.cruds", "system/*.rs", "system/*.*"])
def test_grant_subset_of_registration(registered: str) -> None:
    granted = grant("system/Task.rs", ScopeSet.parse(registered))
    assert granted.to_string() == "system/Task.rs"


def test_grant_narrows_a_wider_request() -> None:
    granted = grant("system/Task.cruds system/Consent.rs", ScopeSet.parse("system/Task.rs"))
    assert granted.to_string() == "system/Task.rs"


def test_grant_wildcard_request_expands_to_registered_types() -> None:
    registered = ScopeSet.parse("system/Task.cruds system/Consent.rs")
    assert grant("system/*.rs", registered).to_string() == "system/Consent.rs system/Task.rs"


def test_grant_v1_request_is_answered_in_v2() -> None:
    assert grant("system/Task.read", ScopeSet.parse("system/Task.*")).to_string() == (
        "system/Task.rs"
    )


def test_grant_empty_request_grants_everything_registered() -> None:
    registered = ScopeSet.parse("system/Task.rs?owner=Organization/1 handoff/admin")
    assert grant("", registered) == registered
    assert grant(None, registered) == registered
    assert grant("   ", registered) == registered


def test_grant_keeps_registered_constraints() -> None:
    registered = ScopeSet.parse("system/Task.cruds?owner=Organization/1")
    granted = grant("system/Task.rs", registered)
    assert granted.to_string() == "system/Task.rs?owner=Organization/1"
    assert granted.constraints("Task", "r") == [{"owner": ["Organization/1"]}]


def test_grant_conjoins_constraints() -> None:
    registered = ScopeSet.parse("system/Task.rs?owner=Organization/1,Organization/2")
    granted = grant("system/Task.rs?owner=Organization/2&status=requested", registered)
    assert granted.constraints("Task", "r") == [
        {"owner": ["Organization/2"], "status": ["requested"]}
    ]


def test_grant_refuses_constraint_outside_registration() -> None:
    registered = ScopeSet.parse("system/Task.rs?owner=Organization/1")
    with pytest.raises(InvalidScopeError):
        grant("system/Task.rs?owner=Organization/2", registered)


def test_grant_admin_only_when_registered() -> None:
    plain = ScopeSet.parse("system/Task.rs")
    assert not grant("handoff/admin system/Task.rs", plain).admin
    with pytest.raises(InvalidScopeError):
        grant("handoff/admin", plain)
    admin = ScopeSet.parse("handoff/admin system/Task.rs")
    assert grant("handoff/admin", admin).to_string() == "handoff/admin"


@pytest.mark.parametrize("requested", ["openid fhirUser", "patient/Task.rs", "system/Consent.rs"])
def test_grant_nothing_grantable_is_invalid_scope(requested: str) -> None:
    with pytest.raises(InvalidScopeError) as info:
        grant(requested, ScopeSet.parse("system/Task.rs"))
    assert info.value.as_json()["error"] == "invalid_scope"


def test_grant_from_client_with_no_registered_scopes() -> None:
    with pytest.raises(InvalidScopeError):
        grant("", ScopeSet())


def test_scope_rule_str() -> None:
    rule = ScopeRule("Task", frozenset({"s", "r"}), (("owner", ("Organization/1",)),))
    assert str(rule) == "system/Task.rs?owner=Organization/1"
