"""The referral Task's state machine, as pure rules (service.domain.referral)."""

from __future__ import annotations

from typing import Any

import pytest

from service.domain.referral import (
    OPEN,
    TRANSITIONS,
    allowed_moves,
    check_content,
    check_new_referral_task,
    check_transition,
    is_referral_task,
)

FULFILL = {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]}


def task(status: str = "requested", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "code": FULFILL,
        "focus": {"reference": "ServiceRequest/sr-1"},
        "for": {"reference": "Patient/p-1"},
        "requester": {"reference": "Organization/jail"},
        "owner": {"reference": "Organization/otp"},
        "authoredOn": "2026-11-01T10:00:00Z",
        **extra,
    }


REASON = {"statusReason": {"text": "because"}}
OUTPUT = {"output": [{"type": {"text": "activity"}, "valueString": "met"}]}


@pytest.mark.parametrize(
    ("frm", "to", "party"), sorted((frm, to, who) for (frm, to), who in TRANSITIONS.items())
)
def test_every_listed_move_is_allowed_to_its_party_only(frm: str, to: str, party: str) -> None:
    new = task(to, **REASON, **OUTPUT)
    assert check_transition(task(frm), new, party) == []  # type: ignore[arg-type]
    other = "requester" if party == "owner" else "owner"
    problems = check_transition(task(frm), new, other)  # type: ignore[arg-type]
    assert [p.kind for p in problems] == ["forbidden"]
    assert f"Only the {party} may move" in problems[0].message


def test_an_unlisted_move_names_the_moves_that_exist() -> None:
    [problem] = check_transition(task("requested"), task("completed", **OUTPUT), "owner")
    assert problem.kind == "rule" and problem.expression == "Task.status"
    assert "accepted, cancelled, entered-in-error, rejected" in problem.message
    [closed] = check_transition(task("completed"), task("accepted"), "owner")
    assert (
        "accepted" not in allowed_moves("completed", "owner") and "from completed" in closed.message
    )


def test_a_stranger_may_not_change_a_referral() -> None:
    [problem] = check_transition(task(), task("accepted"), "other")
    assert problem.kind == "forbidden"


def test_the_owner_changes_only_its_own_elements() -> None:
    problems = check_transition(task(), task("accepted", priority="stat"), "owner")
    assert [p.expression for p in problems] == ["Task.priority"]
    assert check_transition(task(), task("accepted", note=[{"text": "hi"}]), "owner") == []


@pytest.mark.parametrize("status", ["rejected", "cancelled", "on-hold", "failed"])
def test_closing_and_holding_moves_need_a_reason(status: str) -> None:
    problems = check_content(task(status, **OUTPUT))
    assert [p.expression for p in problems] == ["Task.statusReason"]
    assert check_content(task(status, statusReason={"text": "  "})) != []
    assert check_content(task(status, **REASON, **OUTPUT)) == []


def test_completing_needs_an_output_and_only_referral_statuses_exist() -> None:
    assert [p.expression for p in check_content(task("completed"))] == ["Task.output"]
    assert [p.expression for p in check_content(task("ready"))] == ["Task.status"]
    # An unchanged status is not re-judged (a Task completed before the rule keeps working).
    assert check_content(task("completed"), changed_status=False) == []


def test_a_new_referral_task_starts_requested_with_its_parties() -> None:
    assert check_new_referral_task(task()) == []
    assert check_new_referral_task(task("draft")) == []
    bare = {k: v for k, v in task("accepted").items() if k not in ("focus", "requester")}
    found = {p.expression for p in check_new_referral_task(bare)}
    assert found == {"Task.status", "Task.focus", "Task.requester"}
    wrong = task(focus={"reference": "Patient/p-1"})
    assert [p.expression for p in check_new_referral_task(wrong)] == ["Task.focus"]


def test_referral_tasks_are_those_with_code_fulfill() -> None:
    assert is_referral_task(task())
    assert not is_referral_task({**task(), "code": {"text": "fulfill"}})
    assert all(state in OPEN for state in ("requested", "accepted", "in-progress", "on-hold"))
