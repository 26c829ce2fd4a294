"""The disclosure decision and writes through a view, as pure functions (workflows.disclosure)."""

from __future__ import annotations

from typing import Any

from service.workflows.disclosure import (
    WITHHELD,
    decide,
    is_redacted_copy,
    merge_through_view,
)

JAIL, OTP, SSP = "Organization/jail", "Organization/otp", "Organization/ssp"


def note(text: str, author: str | None) -> dict[str, Any]:
    return {"text": text, **({"authorReference": {"reference": author}} if author else {})}


def task(status: str = "in-progress", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": "t-1",
        "meta": {"versionId": "3"},
        "status": status,
        "requester": {"reference": JAIL},
        "owner": {"reference": OTP},
        "for": {"reference": "Patient/p-1"},
        "description": "JAIL-DESCRIPTION",
        "businessStatus": {"text": "OTP-MILESTONE"},
        "output": [{"type": {"text": "activity"}, "valueString": "OTP-OUTPUT"}],
        "note": [note("JAIL-NOTE", JAIL), note("OTP-NOTE", OTP), note("ANON-NOTE", None)],
        **extra,
    }


def service_request() -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "sr-1",
        "requester": {"reference": JAIL},
        "subject": {"reference": "Patient/p-1"},
        "code": {"coding": [{"code": "moud-methadone"}], "text": "Methadone"},
        "category": [
            {"coding": [{"code": "3457005"}]},
            {"coding": [{"code": "410606002"}]},
        ],
        "note": [note("JAIL-SR-NOTE", JAIL)],
        "supportingInfo": [{"reference": "QuestionnaireResponse/q-1"}],
    }


def texts(body: dict[str, Any]) -> str:
    return str(body)


def test_each_party_sees_its_own_part_and_the_other_part_only_under_its_authors_consent() -> None:
    body = task()
    for_jail = decide(body, JAIL, {}).view
    assert for_jail is not None
    assert for_jail["status"] == "accepted" and "businessStatus" not in for_jail
    assert "OTP-" not in texts(for_jail) and "JAIL-DESCRIPTION" in texts(for_jail)
    assert [n["text"] for n in for_jail["note"]] == ["JAIL-NOTE"]
    for_otp = decide(body, OTP, {}).view
    assert for_otp is not None
    assert "JAIL-" not in texts(for_otp) and for_otp["status"] == "in-progress"
    assert [n["text"] for n in for_otp["note"]] == ["OTP-NOTE"]
    # A consent the jail holds lets the OTP see the jail's part; not the other way round.
    whole = decide(body, OTP, {JAIL: "c-1"})
    assert whole.view is None and whole.basis == "consent Consent/c-1"
    assert decide(body, JAIL, {JAIL: "c-2"}).view is not None
    assert decide(body, JAIL, {OTP: "c-3"}).view is None
    # A note nobody signed is shown in full views only.
    assert "ANON-NOTE" not in texts(for_jail) + texts(for_otp)


def test_a_stranger_sees_neither_part_and_an_unwritten_owner_part_is_not_withheld() -> None:
    stranger = decide(task(), SSP, {}).view
    assert stranger is not None and "JAIL-" not in texts(stranger) and "OTP-" not in texts(stranger)
    fresh = task("requested", businessStatus={"text": "referral-sent"})
    fresh.pop("output")
    assert decide(fresh, JAIL, {}, owner_wrote=False).view is None
    assert decide(fresh, JAIL, {}, owner_wrote=True).view is not None


def test_reasons_belong_to_the_party_whose_move_they_explain() -> None:
    rejected = decide(task("rejected", statusReason={"text": "OTP-REASON"}), JAIL, {}).view
    assert rejected is not None and rejected["statusReason"] == {"text": WITHHELD}
    cancelled = decide(task("cancelled", statusReason={"text": "JAIL-REASON"}), JAIL, {}).view
    assert cancelled is not None and cancelled["statusReason"] == {"text": "JAIL-REASON"}
    for_otp = decide(task("cancelled", statusReason={"text": "JAIL-REASON"}), OTP, {}).view
    assert for_otp is not None and "statusReason" not in for_otp


def test_a_referral_request_is_its_requesters_record() -> None:
    sr = service_request()
    assert decide(sr, JAIL, {}).view is None
    shown = decide(sr, OTP, {}).view
    assert shown is not None
    assert "moud-methadone" not in texts(shown) and "JAIL-SR-NOTE" not in texts(shown)
    assert "supportingInfo" not in shown
    assert shown["category"] == [{"coding": [{"code": "3457005"}]}]
    assert is_redacted_copy(shown)
    assert decide(sr, OTP, {JAIL: "c-1"}).view is None


def test_a_write_through_a_view_changes_only_what_the_caller_changed() -> None:
    stored = task()
    view = decide(stored, JAIL, {}).view
    assert view is not None
    sent = {**view, "status": "cancelled", "statusReason": {"text": "moved"}}
    sent["note"] = [*view["note"], note("JAIL-NEW", JAIL)]
    merged = merge_through_view(stored, view, sent)
    assert merged["status"] == "cancelled" and merged["statusReason"] == {"text": "moved"}
    assert merged["businessStatus"] == stored["businessStatus"]  # withheld: kept
    assert merged["output"] == stored["output"]
    assert [n["text"] for n in merged["note"]] == ["JAIL-NOTE", "OTP-NOTE", "ANON-NOTE", "JAIL-NEW"]
    assert not is_redacted_copy(merged)
    # Sending the view back unchanged changes nothing, the coarse status included.
    same = merge_through_view(stored, view, dict(view))
    assert same["status"] == "in-progress"
    assert {k: v for k, v in same.items() if k != "meta"} == {
        k: v for k, v in stored.items() if k != "meta"
    } | {"note": same["note"]}
    # A use case that sends the stored version itself back changes nothing twice.
    again = merge_through_view(stored, view, {**stored, "status": "cancelled"})
    assert again["note"] == stored["note"]
    # Removing an element one was shown removes it.
    assert "description" not in merge_through_view(
        stored, view, {k: v for k, v in view.items() if k != "description"}
    )
