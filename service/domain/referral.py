"""The referral Task's state machine and who may move it (SDOH Clinical Care referral model).

    requested ──owner──> accepted ──owner──> in-progress ⇄ on-hold
        │  └──owner──> rejected          │        │
        │                                └──owner──> completed | failed
        └──requester──> cancelled  (from any open state)
    any state ──requester──> entered-in-error

The owner accepts, rejects, starts, holds, completes and fails; the requester cancels and may
mark entered-in-error. The owner may change only status, statusReason, businessStatus, output
and note. Rejected, cancelled, on-hold and failed need a statusReason with text; completed needs
at least one output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Party = Literal["owner", "requester", "other"]

OPEN = frozenset({"requested", "accepted", "in-progress", "on-hold"})
TERMINAL = frozenset({"rejected", "cancelled", "completed", "failed", "entered-in-error"})
REFERRAL_STATUSES = OPEN | TERMINAL | {"draft"}

# (from, to) -> the party allowed to make the move
TRANSITIONS: dict[tuple[str, str], Party] = {
    ("draft", "requested"): "requester",
    ("draft", "cancelled"): "requester",
    ("requested", "accepted"): "owner",
    ("requested", "rejected"): "owner",
    ("accepted", "in-progress"): "owner",
    ("accepted", "on-hold"): "owner",
    ("accepted", "completed"): "owner",
    ("accepted", "failed"): "owner",
    ("in-progress", "on-hold"): "owner",
    ("in-progress", "completed"): "owner",
    ("in-progress", "failed"): "owner",
    ("on-hold", "in-progress"): "owner",
    ("on-hold", "completed"): "owner",
    ("on-hold", "failed"): "owner",
}
for _state in OPEN | {"draft"}:
    TRANSITIONS[(_state, "cancelled")] = "requester"
for _state in REFERRAL_STATUSES - {"entered-in-error"}:
    TRANSITIONS[(_state, "entered-in-error")] = "requester"

REASON_REQUIRED = frozenset({"rejected", "cancelled", "on-hold", "failed"})
OWNER_FIELDS = frozenset(
    {"status", "statusReason", "businessStatus", "output", "note", "meta", "lastModified", "text"}
)
CREATE_STATUSES = frozenset({"draft", "requested"})


@dataclass(frozen=True)
class Problem:
    kind: Literal["rule", "forbidden"]  # rule -> 422, forbidden -> 403
    message: str
    expression: str = "Task"


def allowed_moves(status: str, party: Party) -> list[str]:
    return sorted(to for (frm, to), who in TRANSITIONS.items() if frm == status and who == party)


def check_transition(old: dict[str, Any], new: dict[str, Any], party: Party) -> list[Problem]:
    """Problems with changing a referral Task from ``old`` to ``new`` as ``party``."""
    problems: list[Problem] = []
    before, after = str(old.get("status")), str(new.get("status"))
    if party == "other":
        return [Problem("forbidden", "Only the Task's owner or requester may change it")]
    if before != after:
        who = TRANSITIONS.get((before, after))
        if who is None:
            allowed = sorted(to for (frm, to) in TRANSITIONS if frm == before)
            problems.append(
                Problem(
                    "rule",
                    f"A referral Task cannot go from {before} to {after}; from {before} it may go "
                    f"to: {', '.join(allowed) or 'nothing (it is closed)'}",
                    "Task.status",
                )
            )
        elif who != party:
            mine = allowed_moves(before, party)
            problems.append(
                Problem(
                    "forbidden",
                    f"Only the {who} may move a Task from {before} to {after}"
                    + (f"; you may move it to: {', '.join(mine)}" if mine else ""),
                    "Task.status",
                )
            )
    if party == "owner":
        changed = sorted(
            k for k in set(old) | set(new) if k not in OWNER_FIELDS and old.get(k) != new.get(k)
        )
        if changed:
            problems.append(
                Problem(
                    "rule",
                    "The owner may change only status, statusReason, businessStatus, output and "
                    f"note; this update also changes: {', '.join(changed)}",
                    f"Task.{changed[0]}",
                )
            )
    problems.extend(check_content(new, changed_status=before != after))
    return problems


def check_content(task: dict[str, Any], *, changed_status: bool = True) -> list[Problem]:
    """Rules on the content of a referral Task in its (new) status."""
    problems: list[Problem] = []
    status = str(task.get("status"))
    if status not in REFERRAL_STATUSES:
        problems.append(
            Problem(
                "rule",
                f"A referral Task may not be '{status}' (the SDOH referral workflow does not use "
                "ready or received)",
                "Task.status",
            )
        )
    if changed_status and status in REASON_REQUIRED:
        reason = task.get("statusReason") or {}
        if not (isinstance(reason, dict) and str(reason.get("text", "")).strip()):
            problems.append(
                Problem(
                    "rule",
                    f"A Task that is {status} needs statusReason.text saying why"
                    + (" (and a coded reason such as at-capacity)" if status == "rejected" else ""),
                    "Task.statusReason",
                )
            )
    if changed_status and status == "completed" and not task.get("output"):
        problems.append(
            Problem(
                "rule",
                "Completing a referral needs at least one output: a Procedure or Observation "
                "(valueReference) or a coded activity such as met-at-release",
                "Task.output",
            )
        )
    return problems


def check_new_referral_task(task: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    if task.get("status") not in CREATE_STATUSES:
        problems.append(
            Problem(
                "rule",
                f"A new referral Task starts as requested (or draft), not {task.get('status')}",
                "Task.status",
            )
        )
    if task.get("intent") != "order":
        problems.append(Problem("rule", "A referral Task has intent order", "Task.intent"))
    for element in ("focus", "for", "requester", "authoredOn"):
        if not task.get(element):
            problems.append(Problem("rule", f"A referral Task needs {element}", f"Task.{element}"))
    focus = (task.get("focus") or {}).get("reference", "")
    if task.get("focus") and not str(focus).startswith("ServiceRequest/"):
        problems.append(
            Problem("rule", "A referral Task's focus is its ServiceRequest", "Task.focus")
        )
    return problems


def is_referral_task(task: dict[str, Any]) -> bool:
    """Tasks with code ``fulfill`` are referral Tasks (SDOHCC TaskForReferralManagement)."""
    for coding in (task.get("code") or {}).get("coding", []):
        if coding.get("code") == "fulfill":
            return True
    return False
