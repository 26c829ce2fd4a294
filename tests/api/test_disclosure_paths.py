"""42 CFR Part 2 on every path around plain reads: writes, write responses, /v1 views, replays,
searches, error texts, consents, deletes and the accounting (workflows.disclosure).

A jail screens a person (DAST-10, labelled) and refers them to a treatment program; a second
program, a syringe services program and a health unit look on. Nobody holds a consent unless a
test records one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.api.routes.v1_record_views import DisclosuresPage
from tests.builders import FHIR_JSON, fhir_consent, jms_person, jms_referral, organization

pytestmark = pytest.mark.usefixtures("instruments")
YES, NO = "LA33-6", "LA32-8"
PERSON = jms_person(
    "P-77", family="Okonkwo", given="Ada", birth_date="1984-06-02", booking_number=None
)
JAIL_NOTE = "JAIL-NOTE-methadone 80 mg"
PATCH_JSON = {"Content-Type": "application/json-patch+json"}


def referral(receiver: str, **extra: Any) -> dict[str, Any]:
    return jms_referral(receiver, person=PERSON, notes=JAIL_NOTE, **extra)


@pytest.fixture
async def net(client: httpx.AsyncClient, org_client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    ids: dict[str, str] = {}
    for key in ("jail", "health", "otp", "otp2", "ssp"):
        made = await client.post(
            "/fhir/Organization", json=organization(key, key), headers=FHIR_JSON
        )
        ids[key] = f"Organization/{made.json()['id']}"
    parties = {key: await org_client(ref) for key, ref in ids.items()}
    answers = {f"dast10-{i}": YES if i < 4 else NO for i in range(1, 11)}
    screening = await parties["jail"].post(
        "/v1/assessments",
        json={
            "person": PERSON,
            "instrument": "dast-10",
            "answers": answers,
            "administered_by": {"name": "Nurse Ada", "role": "nurse"},
            "administered_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "intercept": 3,
        },
    )
    assert screening.status_code == 201, screening.text
    made = await parties["jail"].post("/v1/referrals", json=referral(ids["otp"]))
    assert made.status_code == 201, made.text
    return {
        "ids": ids,
        "admin": client,
        **parties,
        "screening": screening.json(),
        "ref": made.json(),
    }


async def read(c: httpx.AsyncClient, path: str) -> dict[str, Any]:
    r = await c.get(f"/fhir/{path}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def put(c: httpx.AsyncClient, body: dict[str, Any], **changes: Any) -> httpx.Response:
    headers = {**FHIR_JSON, "If-Match": f'W/"{body["meta"]["versionId"]}"'}
    changed = {**body, **changes}
    return await c.put(f"/fhir/{body['resourceType']}/{body['id']}", json=changed, headers=headers)


def redacted(body: dict[str, Any]) -> bool:
    return any(t.get("code") == "REDACTED" for t in body.get("meta", {}).get("tag", []))


def owner_progress(text: str) -> dict[str, Any]:
    return {
        "status": "accepted",
        "businessStatus": {"text": text},
        "note": [{"text": f"{text} note"}],
    }


async def accept(net: dict[str, Any], text: str = "OTP-PROGRESS") -> dict[str, Any]:
    task = await read(net["otp"], f"Task/{net['ref']['task_id']}")
    r = await put(net["otp"], task, **owner_progress(text))
    assert r.status_code == 200, r.text
    accepted: dict[str, Any] = r.json()
    return accepted


# 1. Writes need read access first -----------------------------------------------------------


async def test_a_record_the_caller_may_not_read_cannot_be_written_tested_or_deleted(
    net: dict[str, Any],
) -> None:
    otp, admin = net["otp"], net["admin"]
    obs_ref = net["screening"]["observations"][0]
    qr_ref = net["screening"]["questionnaire_response"]
    assert (await otp.get(f"/fhir/{obs_ref}")).status_code == 404
    stored = await read(admin, obs_ref)
    for op in ("test", "replace"):
        patch = [{"op": op, "path": "/valueInteger", "value": 0}]
        r = await otp.patch(f"/fhir/{obs_ref}", content=json.dumps(patch), headers=PATCH_JSON)
        assert r.status_code == 404, r.text  # as a read: nothing about the stored value
        assert r.json()["issue"][0]["diagnostics"] == f"{obs_ref} is not known to this server"
    r = await otp.put(f"/fhir/{obs_ref}", json={**stored, "valueInteger": 0}, headers=FHIR_JSON)
    assert r.status_code == 409, r.text
    assert (await otp.delete(f"/fhir/{qr_ref}")).status_code == 404
    assert await read(admin, obs_ref) == stored
    assert (await admin.get(f"/fhir/{qr_ref}")).status_code == 200


# 2 and 13. Write responses show the caller's view; authors always read what they wrote -----


async def test_write_responses_are_redacted_and_authors_keep_their_own_notes(
    net: dict[str, Any],
) -> None:
    otp, jail = net["otp"], net["jail"]
    task = await read(otp, f"Task/{net['ref']['task_id']}")
    assert redacted(task) and "description" not in task
    assert JAIL_NOTE not in json.dumps(task)
    r = await put(otp, task, **owner_progress("OTP-ACCEPTED"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert JAIL_NOTE not in json.dumps(answer) and "description" not in answer
    assert [n["text"] for n in answer["note"]] == ["OTP-ACCEPTED note"]  # its own note
    again = await read(otp, f"Task/{task['id']}")
    assert [n["text"] for n in again["note"]] == ["OTP-ACCEPTED note"]
    assert again["note"][0]["authorReference"] == {"reference": net["ids"]["otp"]}
    # The jail's write on the Task the provider annotated answers without the provider's part.
    mine = await read(jail, f"Task/{task['id']}")
    assert "OTP-ACCEPTED" not in json.dumps(mine)
    r = await put(jail, mine, status="cancelled", statusReason={"text": "JAIL-CANCEL moved"})
    assert r.status_code == 200, r.text
    assert "OTP-ACCEPTED" not in r.text and JAIL_NOTE in r.text and "JAIL-CANCEL" in r.text


# 3. A write never copies withheld fields into a version its writer may read ------------------


@pytest.mark.parametrize("how", ["v1", "fhir"])
async def test_a_cancel_after_the_provider_wrote_keeps_its_text_from_the_jail(
    net: dict[str, Any], how: str
) -> None:
    jail, admin = net["jail"], net["admin"]
    task_id = net["ref"]["task_id"]
    await accept(net, "OTP-SECRET")
    if how == "v1":
        r = await jail.post(
            f"/v1/referrals/{net['ref']['referral_id']}/cancel", json={"reason": "moved away"}
        )
    else:
        r = await put(
            jail,
            await read(jail, f"Task/{task_id}"),
            status="cancelled",
            statusReason={"text": "moved away"},
        )
    assert r.status_code == 200, r.text
    assert "OTP-SECRET" not in r.text
    stored = await read(admin, f"Task/{task_id}")
    assert stored["status"] == "cancelled" and stored["businessStatus"]["text"] == "OTP-SECRET"
    assert not redacted(stored)  # no redaction artifact is stored
    assert [n["text"] for n in stored["note"]] == [JAIL_NOTE, "OTP-SECRET note"]  # each once
    for path in (
        f"/fhir/Task/{task_id}",
        f"/fhir/Task/{task_id}/_history",
        f"/fhir/Task?_id={task_id}",
        f"/v1/referrals/{net['ref']['referral_id']}",
    ):
        seen = await jail.get(path)
        assert seen.status_code == 200, (path, seen.text)
        assert "OTP-SECRET" not in seen.text, path


# 4. The /v1 view lists only the Tasks the caller may see ------------------------------------


async def test_after_a_re_referral_the_first_provider_sees_only_its_own_task(
    net: dict[str, Any],
) -> None:
    otp, otp2, jail, ids = net["otp"], net["otp2"], net["jail"], net["ids"]
    sr_id = net["ref"]["referral_id"]
    task = await read(otp, f"Task/{net['ref']['task_id']}")
    r = await put(otp, task, status="rejected", statusReason={"text": "at capacity"})
    assert r.status_code == 200, r.text
    r = await jail.post(
        f"/v1/referrals/{sr_id}/re-refer", json={"receiving_organization": ids["otp2"]}
    )
    assert r.status_code == 200, r.text
    second = r.json()["task_id"]
    second_task = await read(otp2, f"Task/{second}")
    r = await put(otp2, second_task, **owner_progress("OTP2-PROGRESS"))
    assert r.status_code == 200, r.text
    view = await otp.get(f"/v1/referrals/{sr_id}")
    assert view.status_code == 200, view.text
    assert second not in view.text and "OTP2-PROGRESS" not in view.text
    assert [t["task_id"] for t in view.json()["tasks"]] == [task["id"]]
    sr = await read(otp, f"ServiceRequest/{sr_id}")
    assert redacted(sr) and "moud-methadone" not in json.dumps(sr)


# 5. An unowned open Task is redacted for whoever may claim it ---------------------------------


async def test_an_unowned_open_task_is_shown_redacted_to_other_organizations(
    net: dict[str, Any],
) -> None:
    jail, ssp = net["jail"], net["ssp"]
    task = await read(jail, f"Task/{net['ref']['task_id']}")
    open_task = {
        k: v for k, v in task.items() if k not in ("id", "meta", "owner", "businessStatus")
    }
    r = await jail.post("/fhir/Task", json=open_task, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    seen = await read(ssp, f"Task/{r.json()['id']}")
    assert redacted(seen) and JAIL_NOTE not in json.dumps(seen) and "description" not in seen
    found = await ssp.get("/fhir/Task", params={"_id": r.json()["id"]})
    assert JAIL_NOTE not in found.text


# 6. Only the discloser's consent authorizes --------------------------------------------------


async def test_a_recipient_cannot_authorize_itself_and_the_custodian_can_revoke(
    net: dict[str, Any],
) -> None:
    otp, jail, ids = net["otp"], net["jail"], net["ids"]
    qr = net["screening"]["questionnaire_response"]
    patient = f"Patient/{net['ref']['patient_id']}"
    forged = await fhir_consent(otp, patient, custodian=ids["jail"], recipients=[ids["otp"]])
    assert (await otp.get(f"/fhir/{qr}")).status_code == 404
    await fhir_consent(otp, patient, custodian=ids["otp"], recipients=[ids["otp"]])
    assert (await otp.get(f"/fhir/{qr}")).status_code == 404
    r = await jail.post(f"/v1/consents/{forged['id']}/revoke", json={"reason": "not ours"})
    assert r.status_code == 200 and r.json()["status"] == "inactive", r.text
    assert (await otp.get(f"/fhir/{qr}")).status_code == 404  # its own "consent" neither
    given = await fhir_consent(jail, patient, custodian=ids["jail"], recipients=[ids["otp"]])
    assert (await otp.get(f"/fhir/{qr}")).status_code == 200
    r = await jail.post(f"/v1/consents/{given['id']}/revoke", json={"reason": "withdrawn"})
    assert r.status_code == 200, r.text
    assert (await otp.get(f"/fhir/{qr}")).status_code == 404


async def test_a_consent_that_expired_is_reported_so_and_cannot_be_recorded(
    net: dict[str, Any],
) -> None:
    jail, ids = net["jail"], net["ids"]
    body = {
        "person": PERSON,
        "signed_at": (datetime.now(UTC) - timedelta(days=40)).isoformat(),
        "signed_by": "Ada Okonkwo (self)",
        "recipients": [ids["otp"]],
        "expires": (datetime.now(UTC) - timedelta(days=10)).isoformat(),
    }
    r = await jail.post("/v1/consents", json=body)
    assert r.status_code == 422 and "expires is in the past" in r.text
    ends = datetime.now(UTC) + timedelta(seconds=1)
    r = await jail.post("/v1/consents", json={**body, "expires": ends.isoformat()})
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    from service.features.consents.records import consent_status

    stored = await read(net["admin"], f"Consent/{r.json()['consent_id']}")
    assert consent_status(stored, now=ends + timedelta(seconds=1)) == "expired"
    assert consent_status(stored, now=ends - timedelta(seconds=1)) == "active"


# 7. Replays are re-rendered through the policy ------------------------------------------------


async def test_a_replay_after_revocation_shows_nothing_the_consent_covered(
    net: dict[str, Any],
) -> None:
    otp, jail, ids = net["otp"], net["jail"], net["ids"]
    qr = net["screening"]["questionnaire_response"]
    patient = f"Patient/{net['ref']['patient_id']}"
    given = await fhir_consent(jail, patient, custodian=ids["jail"], recipients=[ids["otp"]])
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": qr}},
            {"request": {"method": "GET", "url": f"QuestionnaireResponse?_id={qr.split('/')[1]}"}},
        ],
    }
    headers = {**FHIR_JSON, "Idempotency-Key": "replay-after-revoke"}
    first = await otp.post("/fhir", json=bundle, headers=headers)
    assert first.status_code == 200 and "Okonkwo" not in first.text
    assert '"QuestionnaireResponse"' in first.text
    await jail.post(f"/v1/consents/{given['id']}/revoke", json={"reason": "withdrawn"})
    again = await otp.post("/fhir", json=bundle, headers=headers)
    assert again.status_code == 200, again.text
    entries = again.json()["entry"]
    assert '"resourceType": "QuestionnaireResponse"' not in json.dumps(entries)
    assert entries[0]["response"]["status"].startswith("404")


# 8 and 9. Searches and error texts see only the caller's view; a party changes only its own ---


async def test_searches_do_not_match_on_what_the_view_withholds(net: dict[str, Any]) -> None:
    otp, jail = net["otp"], net["jail"]
    sr_id = net["ref"]["referral_id"]
    for code in ("moud-methadone", "moud-buprenorphine", "310653000"):
        found = await otp.get("/fhir/ServiceRequest", params={"_id": sr_id, "code": code})
        assert found.status_code == 200 and found.json().get("entry", []) == [], code
    mine = await jail.get("/fhir/ServiceRequest", params={"_id": sr_id, "code": "310653000"})
    assert len(mine.json()["entry"]) == 1  # the author's own search is unchanged
    accepted = await accept(net)
    r = await put(net["otp"], accepted, status="on-hold", statusReason={"text": "OTP-HOLD"})
    assert r.status_code == 200, r.text
    task_id = accepted["id"]
    for status in ("on-hold", "accepted"):
        found = await jail.get("/fhir/Task", params={"_id": task_id, "status": status})
        assert found.json().get("entry", []) == [], status
        counted = await jail.get(
            "/fhir/Task", params={"_id": task_id, "status": status, "_summary": "count"}
        )
        assert counted.json()["total"] == 0
    shown = await read(jail, f"Task/{task_id}")
    assert shown["status"] == "accepted"
    # The jail sends back what it was shown: nothing it could not see is changed or echoed.
    r = await put(jail, shown, priority="urgent")
    assert r.status_code == 200, r.text
    assert "on-hold" not in r.text and "OTP-HOLD" not in r.text
    stored = await read(net["admin"], f"Task/{task_id}")
    assert stored["status"] == "on-hold" and stored["priority"] == "urgent"


async def test_the_receiving_program_cannot_change_the_referral(net: dict[str, Any]) -> None:
    otp, jail, admin = net["otp"], net["jail"], net["admin"]
    sr_id = net["ref"]["referral_id"]
    before = await read(admin, f"ServiceRequest/{sr_id}")
    patch = [{"op": "replace", "path": "/priority", "value": "stat"}]
    r = await otp.patch(
        f"/fhir/ServiceRequest/{sr_id}",
        content=json.dumps(patch),
        headers={**PATCH_JSON, "If-Match": f'W/"{before["meta"]["versionId"]}"'},
    )
    assert r.status_code == 403, r.text
    assert await read(admin, f"ServiceRequest/{sr_id}") == before
    assert (await jail.get(f"/v1/referrals/{sr_id}")).json()["services"] == ["moud-methadone"]


# 10. The accounting pages through every disclosure ---------------------------------------------


async def test_the_accounting_pages_newest_first_through_every_event(net: dict[str, Any]) -> None:
    otp, jail, ids = net["otp"], net["jail"], net["ids"]
    qr = net["screening"]["questionnaire_response"]
    patient_id = net["screening"]["patient_id"]
    patient = f"Patient/{patient_id}"
    await fhir_consent(jail, patient, custodian=ids["jail"], recipients=[ids["otp"]])
    for _ in range(5):
        assert (await otp.get(f"/fhir/{qr}")).status_code == 200
    url: str | None = f"/v1/patients/{patient_id}/disclosures?count=2"
    pages, seen = 0, []
    while url:
        page = (await jail.get(url)).json()
        DisclosuresPage.model_validate(page)  # what the OpenAPI documents, field for field
        pages += 1
        seen += [row["disclosed_at"] for row in page["disclosures"] if row["record"].startswith(qr)]
        url = page["next"]
    assert len(seen) == 5 and pages == 3 and seen == sorted(seen, reverse=True)
    oldest = (await jail.get(f"/v1/patients/{patient_id}/disclosures?order=oldest")).json()
    assert [r["disclosed_at"] for r in oldest["disclosures"]] == sorted(seen)
    csv_text = (await jail.get(f"/v1/patients/{patient_id}/disclosures?format=csv")).text
    assert len(csv_text.strip().splitlines()) == 1 + 5
    for damaged in ("not-a-token", "WyJmIl0"):  # not base64 JSON; a token of another length
        r = await jail.get(f"/v1/patients/{patient_id}/disclosures?page={damaged}")
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
        issue = r.json()["issue"][0]
        assert issue["expression"] == ["page"] and "_page" not in issue["diagnostics"]
        assert "next link" in issue["diagnostics"]


# 11. Invisible and missing look alike ---------------------------------------------------------


async def test_an_invisible_target_looks_like_a_missing_one(net: dict[str, Any]) -> None:
    ssp, jail = net["ssp"], net["jail"]
    task = await read(jail, f"Task/{net['ref']['task_id']}")
    answers = []
    for focus in (f"ServiceRequest/{net['ref']['referral_id']}", "ServiceRequest/no-such-one"):
        body = {k: v for k, v in task.items() if k not in ("id", "meta", "owner")}
        body.update(requester={"reference": net["ids"]["ssp"]}, focus={"reference": focus})
        r = await ssp.post("/fhir/Task", json=body, headers=FHIR_JSON)
        answers.append((r.status_code, r.json()["issue"][0]["diagnostics"].replace(focus, "X")))
    assert answers[0] == answers[1] and answers[0][0] == 422
    r = await ssp.put(f"/fhir/Task/{task['id']}", json=task, headers=FHIR_JSON)
    assert r.status_code == 409 and JAIL_NOTE not in r.text and "Okonkwo" not in r.text


# 12. Referral rules on every verb --------------------------------------------------------------


async def test_referral_tasks_and_requests_are_not_deleted(net: dict[str, Any]) -> None:
    otp, jail = net["otp"], net["jail"]
    task_id, sr_id = net["ref"]["task_id"], net["ref"]["referral_id"]
    r = await otp.delete(f"/fhir/Task/{task_id}")
    assert r.status_code == 422 and "rejects it" in r.text
    await accept(net)
    assert (await jail.delete(f"/fhir/Task/{task_id}")).status_code == 422
    r = await jail.delete(f"/fhir/ServiceRequest/{sr_id}")
    assert r.status_code == 422 and "cancel" in r.text
    view = (await jail.get(f"/v1/referrals/{sr_id}")).json()
    assert view["status"] == "accepted" and view["service_request_status"] == "active"


async def test_milestones_and_reasons_come_from_the_published_code_systems(
    net: dict[str, Any],
) -> None:
    otp = net["otp"]
    task = await read(otp, f"Task/{net['ref']['task_id']}")
    system = "https://handoff.dev/fhir/CodeSystem/warm-handoff-status"
    for code, words in (
        ("zzz-not-a-milestone", "not a warm-handoff milestone"),
        ("closed-deceased", "closes the referral"),
    ):
        business = {"coding": [{"system": system, "code": code}]}
        r = await put(otp, task, status="accepted", businessStatus=business)
        assert r.status_code == 422 and words in r.text, r.text
    reason = {
        "coding": [
            {
                "system": "https://handoff.dev/fhir/CodeSystem/referral-status-reason",
                "code": "bored",
            }
        ],
        "text": "no",
    }
    r = await put(otp, task, status="rejected", statusReason=reason)
    assert r.status_code == 422 and "not a reason" in r.text


async def test_a_fhir_referral_records_its_intercept(net: dict[str, Any]) -> None:
    jail = net["jail"]
    sr = await read(jail, f"ServiceRequest/{net['ref']['referral_id']}")
    body = {k: v for k, v in sr.items() if k not in ("id", "meta", "extension", "identifier")}
    r = await jail.post("/fhir/ServiceRequest", json=body, headers=FHIR_JSON)
    assert r.status_code == 422 and "Sequential Intercept Model" in r.text


async def test_an_organization_can_refer_to_itself_and_accept(net: dict[str, Any]) -> None:
    jail, ids = net["jail"], net["ids"]
    made = await jail.post(
        "/v1/referrals", json=referral(ids["jail"], referral_id="SELF-1", services=["housing"])
    )
    assert made.status_code == 201, made.text
    task = await read(jail, f"Task/{made.json()['task_id']}")
    r = await put(jail, task, status="accepted")
    assert r.status_code == 200, r.text
    r = await put(jail, r.json(), status="cancelled", statusReason={"text": "moved"})
    assert r.status_code == 200, r.text
