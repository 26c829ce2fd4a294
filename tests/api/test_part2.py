"""42 CFR Part 2: labels, consent, enforcement, break-glass, audit and the accounting."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.builders import (
    FHIR_JSON,
    fhir_consent,
    in_future,
    jms_person,
    jms_referral,
    organization,
)
from tests.statements import parameters_sent, statements_sent

pytestmark = pytest.mark.usefixtures("instruments")
YES, NO = "LA33-6", "LA32-8"
PERSON = jms_person(
    "P-5", family="Nakamura", given="Lee", birth_date="1979-01-02", sex="male", booking_number=None
)


def methadone_referral(
    person: dict[str, Any], receiver: str, *, days: int, **extra: Any
) -> dict[str, Any]:
    """A jail's referral of ``person`` to ``receiver`` for methadone, released in ``days``."""
    return jms_referral(receiver, person=person, release_at=in_future(days=days), **extra)


@pytest.fixture
async def world(client: httpx.AsyncClient, org_client, issue_token) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    ids = {}
    for key in ("jail", "otp", "ssp"):
        org = (
            await client.post("/fhir/Organization", json=organization(key, key), headers=FHIR_JSON)
        ).json()
        ids[key] = f"Organization/{org['id']}"
    jail = await org_client(ids["jail"])
    otp = await org_client(ids["otp"])
    ssp = await org_client(ids["ssp"])
    # The jail screens the person (labelled) and refers them to the OTP.
    answers = {f"dast10-{i}": YES if i < 4 else NO for i in range(1, 11)}
    screening = (
        await jail.post(
            "/v1/assessments",
            json={
                "person": PERSON,
                "instrument": "dast-10",
                "answers": answers,
                "administered_by": {"name": "Nurse Ada", "role": "nurse"},
                "administered_at": "2026-11-20T09:30:00-05:00",
                "intercept": 3,
            },
        )
    ).json()
    referral = (
        await jail.post(
            "/v1/referrals",
            json=methadone_referral(
                PERSON,
                ids["otp"],
                days=3,
                supporting_info=[screening["questionnaire_response"]],
            ),
        )
    ).json()
    return {
        "ids": ids,
        "jail": jail,
        "otp": otp,
        "ssp": ssp,
        "screening": screening,
        "referral": referral,
        "client": client,
        "issue_token": issue_token,
    }


async def consent(jail: httpx.AsyncClient, recipients: list[str], **over: Any) -> dict[str, Any]:
    body = {
        "person": PERSON,
        "signed_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "signed_by": "Lee Nakamura (self)",
        "recipients": recipients,
    }
    body.update(over)
    r = await jail.post("/v1/consents", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def test_consent_form_must_be_base64_or_a_link(world: dict[str, Any]) -> None:
    jail, ids = world["jail"], world["ids"]
    body = {
        "person": PERSON,
        "signed_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "signed_by": "Lee Nakamura (self)",
        "recipients": [ids["otp"]],
    }
    bad = await jail.post(
        "/v1/consents", json=body | {"form": {"content_type": "application/pdf", "data": "%%%"}}
    )
    assert bad.status_code == 422, bad.text
    [issue] = bad.json()["issue"]
    assert issue["expression"] == ["form.data"] and "base64" in issue["diagnostics"]
    form = {"content_type": "application/pdf", "data": "JVBERi0xLjQK", "title": "Signed"}
    made = await consent(jail, [ids["otp"]], form=form)
    stored = (await world["client"].get(f"/fhir/Consent/{made['consent_id']}")).json()
    assert stored["sourceAttachment"]["data"] == "JVBERi0xLjQK"


async def test_labels_applied_on_every_path(world: dict[str, Any]) -> None:
    client, jail = world["client"], world["jail"]
    qr = (await client.get(f"/fhir/{world['screening']['questionnaire_response']}")).json()
    codes = {s["code"] for s in qr["meta"]["security"]}
    assert {"R", "SUD", "42CFRPart2", "NORDSCLCD"} <= codes  # /v1 path
    obs = (await client.get(f"/fhir/{world['screening']['observations'][0]}")).json()
    assert "42CFRPart2" in {s["code"] for s in obs["meta"]["security"]}  # derived
    sr = (await client.get(f"/fhir/ServiceRequest/{world['referral']['referral_id']}")).json()
    assert "SUD" in {s["code"] for s in sr["meta"]["security"]}
    task = (await client.get(f"/fhir/Task/{world['referral']['task_id']}")).json()
    assert "SUD" in {s["code"] for s in task["meta"]["security"]}  # from its focus
    # FHIR create: a Procedure of overdose education
    proc = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "460831000124102"}]},
        "subject": qr["subject"],
    }
    created = (await jail.post("/fhir/Procedure", json=proc, headers=FHIR_JSON)).json()
    assert "42CFRPart2" in {s["code"] for s in created["meta"]["security"]}
    # A client cannot strip the server's labels on update.
    stripped = copy.deepcopy(created)
    del stripped["meta"]["security"]
    r = await jail.put(f"/fhir/Procedure/{created['id']}", json=stripped, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    updated = r.json()
    assert {"R", "SUD", "42CFRPart2"} <= {s["code"] for s in updated["meta"]["security"]}
    # Transaction path
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": proc, "request": {"method": "POST", "url": "Procedure"}}],
    }
    out = (await jail.post("/fhir", json=bundle, headers=FHIR_JSON)).json()
    assert "42CFRPart2" in {s["code"] for s in out["entry"][0]["resource"]["meta"]["security"]}
    # A client may add labels of its own to anything.
    org = organization("x", "x-1")
    plain = {
        "resourceType": "RelatedPerson",
        "patient": qr["subject"],
        "meta": {
            "security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUD"}
            ]
        },
    }
    rp = (await jail.post("/fhir/RelatedPerson", json=plain, headers=FHIR_JSON)).json()
    assert "42CFRPart2" in {s["code"] for s in rp["meta"]["security"]}
    assert org


async def test_no_disclosure_without_consent(world: dict[str, Any]) -> None:
    otp, qr_ref = world["otp"], world["screening"]["questionnaire_response"]
    assert (await otp.get(f"/fhir/{qr_ref}")).status_code == 404
    found = (await otp.get("/fhir/QuestionnaireResponse")).json()
    assert found.get("entry", []) == []
    found = (
        await otp.get(
            "/fhir/ServiceRequest",
            params={
                "_id": world["referral"]["referral_id"],
                "_include": "ServiceRequest:supporting-info",
            },
        )
    ).json()
    types = [e["resource"]["resourceType"] for e in found["entry"]]
    assert types == ["ServiceRequest"]  # the screening is not included
    sr = found["entry"][0]["resource"]
    assert "coding" not in sr["code"] and "supportingInfo" not in sr  # redacted referral


async def test_disclosure_with_consent_and_its_limits(world: dict[str, Any]) -> None:
    otp, ssp, jail, ids = world["otp"], world["ssp"], world["jail"], world["ids"]
    qr_ref = world["screening"]["questionnaire_response"]
    given = await consent(jail, [ids["otp"]])
    r = await otp.get(f"/fhir/{qr_ref}")
    assert r.status_code == 200
    assert "42 CFR Part 2" in r.headers.get("X-Redisclosure-Notice", "")
    found = (
        await otp.get(
            "/fhir/ServiceRequest",
            params={
                "_id": world["referral"]["referral_id"],
                "_include": "ServiceRequest:supporting-info",
            },
        )
    ).json()
    assert {e["resource"]["resourceType"] for e in found["entry"]} == {
        "ServiceRequest",
        "QuestionnaireResponse",
    }
    # Another recipient is not covered, nor another purpose.
    assert (await ssp.get(f"/fhir/{qr_ref}")).status_code == 404
    assert (
        await otp.get(f"/fhir/{qr_ref}", headers={"X-Purpose-Of-Use": "HPAYMT"})
    ).status_code == 404
    # Revocation takes effect at once, also for a next page fetched afterwards.
    page = (await otp.get("/fhir/QuestionnaireResponse", params={"_count": 1})).json()
    assert len(page["entry"]) == 1
    r = await jail.post(
        f"/v1/consents/{given['consent_id']}/revoke", json={"reason": "Patient revoked in writing"}
    )
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    assert (await otp.get(f"/fhir/{qr_ref}")).status_code == 404
    again = (await otp.get(page["link"][0]["url"])).json()
    assert again.get("entry", []) == []


async def test_revoking_twice_at_once_answers_both(world: dict[str, Any]) -> None:
    """A revocation retried (or double-clicked) while the first is running: both answer the
    inactive Consent, one revocation recorded."""
    jail, ids = world["jail"], world["ids"]
    given = await consent(jail, [ids["otp"]])
    url = f"/v1/consents/{given['consent_id']}/revoke"
    answers = await asyncio.gather(
        *(jail.post(url, json={"reason": "Patient revoked in writing"}) for _ in range(3))
    )
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert {a.json()["status"] for a in answers} == {"inactive"}
    stored = (await jail.get(f"/fhir/Consent/{given['consent_id']}")).json()
    assert stored["meta"]["versionId"] == "2"


async def test_expired_consent_discloses_nothing(world: dict[str, Any]) -> None:
    otp, jail, ids = world["otp"], world["jail"], world["ids"]
    long_ago = datetime.now(UTC) - timedelta(days=400)
    period = {"start": long_ago.isoformat(), "end": (long_ago + timedelta(days=30)).isoformat()}
    patient = world["referral"]["patient_id"]
    made = await fhir_consent(
        jail, f"Patient/{patient}", custodian=ids["jail"], recipients=[ids["otp"]], period=period
    )
    assert (
        await world["client"].get(f"/fhir/Consent/{made['id']}")
    ).status_code == 200  # recorded, for the record
    assert (
        await otp.get(f"/fhir/{world['screening']['questionnaire_response']}")
    ).status_code == 404


async def test_consent_stops_disclosing_the_moment_it_expires(world: dict[str, Any]) -> None:
    """The consent check is prepared once and reused (cached SQL): its clock must still be
    read at each execution, not when the condition was first built."""
    otp, jail, ids = world["otp"], world["jail"], world["ids"]
    qr = f"/fhir/{world['screening']['questionnaire_response']}"
    ends = datetime.now(UTC) + timedelta(seconds=2)
    await consent(jail, [ids["otp"]], expires=ends.isoformat())
    assert (await otp.get(qr)).status_code == 200
    await asyncio.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.5)
    assert (await otp.get(qr)).status_code == 404


async def test_provider_reports_back_only_under_consent(world: dict[str, Any], engine: Any) -> None:
    otp, jail, ids = world["otp"], world["jail"], world["ids"]
    await consent(jail, [ids["otp"]])  # the jail is not a recipient of the provider's news
    task = (await otp.get(f"/fhir/Task/{world['referral']['task_id']}")).json()
    headers = {**FHIR_JSON, "If-Match": f'W/"{task["meta"]["versionId"]}"'}
    accepted = (
        await otp.put(
            f"/fhir/Task/{task['id']}", json=dict(task, status="accepted"), headers=headers
        )
    ).json()
    headers = {**FHIR_JSON, "If-Match": f'W/"{accepted["meta"]["versionId"]}"'}
    progress = dict(
        accepted, status="in-progress", businessStatus={"text": "first appointment attended"}
    )
    assert (
        await otp.put(f"/fhir/Task/{task['id']}", json=progress, headers=headers)
    ).status_code == 200
    seen = (await jail.get(f"/fhir/Task/{task['id']}")).json()
    assert seen["status"] == "accepted" and "businessStatus" not in seen
    with parameters_sent(engine) as sent:
        view = (await jail.get(f"/v1/referrals/{world['referral']['referral_id']}")).json()
    actor_lookups = [values for values in sent if "_actor" in values]
    assert [e["status"] for e in view["timeline"]] == ["requested", "accepted"]
    # Who wrote each version: once for "by" in the timeline, once for each page of views
    # (the Task list and the timeline's versions), whatever the number of versions.
    assert len(actor_lookups) == 3, actor_lookups
    patient = f"Patient/{world['referral']['patient_id']}"
    # A consent the jail records naming itself authorizes nothing: the progress is the
    # provider's record, disclosed only under a consent the provider holds.
    await consent(jail, [ids["jail"]])
    seen = (await jail.get(f"/fhir/Task/{task['id']}")).json()
    assert seen["status"] == "accepted" and "businessStatus" not in seen
    await fhir_consent(otp, patient, custodian=ids["otp"], recipients=[ids["jail"]])
    seen = (await jail.get(f"/fhir/Task/{task['id']}")).json()
    assert seen["status"] == "in-progress" and seen["businessStatus"]["text"]


async def test_break_glass(world: dict[str, Any]) -> None:
    otp, ids, issue_token, client = (
        world["otp"],
        world["ids"],
        world["issue_token"],
        world["client"],
    )
    qr_ref = world["screening"]["questionnaire_response"]
    r = await otp.get(
        f"/fhir/{qr_ref}", headers={"X-Break-Glass-Reason": "Overdose in the lobby, need history"}
    )
    assert r.status_code == 403  # no break-glass scope
    token = await issue_token(organization=ids["otp"], scopes="system/*.rs handoff/break-glass")
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Break-Glass-Reason": "Overdose in the lobby, need history",
    }
    r = await client.get(f"/fhir/{qr_ref}", headers=headers)
    assert r.status_code == 200
    events = (
        await client.get(
            "/fhir/AuditEvent",
            params={"subtype": "https://handoff.dev/fhir/CodeSystem/audit-subtype|break-glass"},
        )
    ).json()
    assert len(events["entry"]) == 1
    text = str(events["entry"][0]["resource"])
    assert "Overdose in the lobby" in text
    assert "Nakamura" not in text


async def test_accounting_lists_exactly_the_disclosures(world: dict[str, Any]) -> None:
    otp, jail, ids = world["otp"], world["jail"], world["ids"]
    qr_ref = world["screening"]["questionnaire_response"]
    patient_id = world["screening"]["patient_id"]
    empty = (await jail.get(f"/v1/patients/{patient_id}/disclosures")).json()
    assert empty == {"disclosures": [], "order": "newest", "next": None}
    given = await consent(jail, [ids["otp"]])
    await otp.get(f"/fhir/{qr_ref}")
    await otp.get(f"/fhir/{qr_ref}")
    await jail.get(f"/fhir/{qr_ref}")  # the author reading its own record is no disclosure
    rows = (await jail.get(f"/v1/patients/{patient_id}/disclosures")).json()["disclosures"]
    assert len(rows) == 2
    assert {r["recipient"] for r in rows} == {ids["otp"]}
    assert {r["consent"] for r in rows} == {f"Consent/{given['consent_id']}"}
    assert {r["basis"] for r in rows} == {"consent"}
    assert all(r["record"].startswith(qr_ref) for r in rows)
    csv_text = (
        await jail.get(f"/v1/patients/{patient_id}/disclosures", params={"format": "csv"})
    ).text
    assert csv_text.splitlines()[0].startswith("disclosed_at,recipient")
    assert len(csv_text.strip().splitlines()) == 3
    assert (await otp.get(f"/v1/patients/{patient_id}/disclosures")).status_code in (403, 404)


async def test_accounting_names_the_basis_of_a_redacted_disclosure(
    world: dict[str, Any],
) -> None:
    """Without a consent the provider sees the referral redacted; the accounting says so
    instead of listing a disclosure with neither a consent nor an exception."""
    otp, jail = world["otp"], world["jail"]
    patient_id = world["screening"]["patient_id"]
    sr_id = world["referral"]["referral_id"]
    shown = (await otp.get(f"/fhir/ServiceRequest/{sr_id}")).json()
    assert "coding" not in shown["code"]  # redacted
    rows = (await jail.get(f"/v1/patients/{patient_id}/disclosures")).json()["disclosures"]
    assert [r["record"].split("/_history")[0] for r in rows] == [f"ServiceRequest/{sr_id}"]
    assert rows[0]["basis"] == "redacted view"
    assert rows[0]["consent"] is None and rows[0]["exception"] is None
    header = (
        await jail.get(f"/v1/patients/{patient_id}/disclosures", params={"format": "csv"})
    ).text.splitlines()[0]
    assert header == (
        "disclosed_at,recipient,client_id,record,basis,consent,exception,purpose,audit_event"
    )


async def test_audit_events_are_append_only_and_phi_free(world: dict[str, Any]) -> None:
    client = world["client"]
    events = (await client.get("/fhir/AuditEvent", params={"_count": 200})).json()
    assert events["entry"]
    text = str(events)
    assert "Nakamura" not in text and "1979-01-02" not in text
    one = events["entry"][0]["resource"]
    assert (
        await client.put(f"/fhir/AuditEvent/{one['id']}", json=one, headers=FHIR_JSON)
    ).status_code == 405
    assert (await client.delete(f"/fhir/AuditEvent/{one['id']}")).status_code == 405


@pytest.mark.performance_contract
async def test_a_page_of_many_peoples_records_costs_the_same_queries_as_one(
    world: dict[str, Any], engine: Any
) -> None:
    """A provider polls labelled referrals of many people, some consented: each Task is shown
    whole or redacted by its own patient's consent, the page's AuditEvent names each one's
    basis, and the consent and author look-ups are per page, not per record."""
    otp, jail, client, ids = world["otp"], world["jail"], world["client"], world["ids"]

    async def refer(n: int, *, consented: bool) -> str:
        person = dict(PERSON, person_id=f"P-page-{n}")
        r = await jail.post("/v1/referrals", json=methadone_referral(person, ids["otp"], days=2))
        assert r.status_code == 201, r.text
        if consented:
            given = await consent(jail, [ids["otp"]], person=person)
            consents[r.json()["task_id"]] = f"Consent/{given['consent_id']}"
        return str(r.json()["task_id"])

    async def poll() -> tuple[httpx.Response, int]:
        with statements_sent(engine) as statements:
            r = await otp.get("/fhir/Task", params={"owner": ids["otp"], "_count": 100})
        assert r.status_code == 200, r.text
        return r, len(statements)

    consents: dict[str, str] = {}
    tasks = [await refer(n, consented=n % 2 == 0) for n in range(2)]
    _, few = await poll()
    tasks += [await refer(n, consented=n % 2 == 0) for n in range(2, 8)]
    page, many = await poll()
    assert many == few  # 2 or 8 labelled referrals: the same number of statements

    shown = {e["resource"]["id"]: e["resource"] for e in page.json()["entry"]}
    assert set(tasks) <= set(shown)
    for task_id in tasks:
        tags = {t.get("code") for t in shown[task_id].get("meta", {}).get("tag", [])}
        assert ("REDACTED" in tags) == (task_id not in consents), task_id

    request_id = page.headers["x-request-id"]
    events = (await client.get("/fhir/AuditEvent", params={"_sort": "-date", "_count": 50})).json()[
        "entry"
    ]
    audit = next(
        e["resource"]
        for e in events
        if any(
            (x.get("what") or {}).get("identifier", {}).get("value") == request_id
            for x in e["resource"]["entity"]
        )
    )
    assert any(s["code"] == "disclosure" for s in audit["subtype"])
    basis = {}
    for entity in audit["entity"]:
        ref = (entity.get("what") or {}).get("reference", "")
        if ref.startswith("Task/"):
            basis[ref.split("/")[1]] = {d["type"]: d["valueString"] for d in entity["detail"]}
    for task_id in tasks:
        if task_id in consents:
            assert basis[task_id] == {"consent": consents[task_id]}, task_id
        else:
            assert basis[task_id] == {"basis": "redacted view"}, task_id
