"""One person across organizations: person-identifier domains, the booking-number conflict,
and a party to a referral naming the Patient it received in /v1 calls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.api.test_assessments import assessment, dast
from tests.api.test_referrals import network, referral  # noqa: F401

pytestmark = pytest.mark.usefixtures("instruments")


def adams_baker(pid: str, family: str, born: str) -> dict[str, Any]:
    return {
        "person_id": pid,
        "booking_number": "BK-9",
        "family_name": family,
        "given_names": ["Sam"],
        "birth_date": born,
        "sex": "male",
    }


async def test_a_domain_makes_two_organizations_one_person(
    client: httpx.AsyncClient,
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    # Only an administrator declares a domain.
    r = await jail.put("/admin/identity-domains/county", json={"organizations": [ids["jail"]]})
    assert r.status_code == 403
    r = await client.put(
        "/admin/identity-domains/county", json={"organizations": [ids["jail"], "Organization/x"]}
    )
    assert r.status_code == 422 and "Organization/x is not known" in r.text
    # The jail and its health unit (here: otp) share the JMS person id.
    r = await client.put(
        "/admin/identity-domains/county", json={"organizations": [ids["jail"], ids["otp"]]}
    )
    assert r.status_code == 200, r.text
    listed = (await client.get("/admin/identity-domains")).json()
    assert listed == [{"domain": "county", "organizations": sorted([ids["jail"], ids["otp"]])}]
    r = await client.put("/admin/identity-domains/other", json={"organizations": [ids["otp"]]})
    assert r.status_code == 422 and "in the domain county" in r.text
    booked = (await jail.post("/v1/assessments", json=assessment("dast-10", dast({1})))).json()
    screened = (await otp.post("/v1/assessments", json=assessment("dast-10", dast({2})))).json()
    elsewhere = (await peer.post("/v1/assessments", json=assessment("dast-10", dast({3})))).json()
    assert booked["patient_id"] == screened["patient_id"]
    assert elsewhere["patient_id"] != booked["patient_id"]
    # Dissolved: each organization matches by its own identifiers again.
    assert (await client.delete("/admin/identity-domains/county")).status_code == 204
    assert (await client.get("/admin/identity-domains")).json() == []


async def test_a_booking_number_never_moves_a_record_to_another_person(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, ids = network["jail"], network["ids"]
    adams = referral(
        ids["otp"], referral_id="R-A", person=adams_baker("PID-A1", "Adams", "1970-01-01")
    )
    r = await jail.post("/v1/referrals", json=adams)
    assert r.status_code == 201, r.text
    adams_patient = r.json()["patient_id"]
    baker = referral(
        ids["otp"], referral_id="R-B", person=adams_baker("PID-B2", "Baker", "1999-01-01")
    )
    r = await jail.post("/v1/referrals", json=baker)
    assert r.status_code == 422, r.text
    message = r.json()["issue"][0]["diagnostics"]
    assert f"Patient/{adams_patient}" in message and "PID-A1" in message and "PID-B2" in message
    assert {i["expression"][0] for i in r.json()["issue"]} == {
        "person.person_id",
        "person.booking_number",
    }
    patient = (await jail.get(f"/fhir/Patient/{adams_patient}")).json()
    assert patient["name"][0]["family"] == "Adams"  # untouched
    # A person id that finds one Patient wins; a booking number of another Patient is a conflict.
    other = adams_baker("PID-C3", "Cole", "1980-01-01")
    other["booking_number"] = "BK-10"
    r = await jail.post("/v1/referrals", json=referral(ids["otp"], referral_id="R-C", person=other))
    assert r.status_code == 201
    other["booking_number"] = "BK-9"
    r = await jail.post("/v1/referrals", json=referral(ids["otp"], referral_id="R-D", person=other))
    assert r.status_code == 422 and f"Patient/{adams_patient}" in r.text


async def test_a_party_to_a_referral_names_the_patient_it_received(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, otp, peer, ids = network["jail"], network["otp"], network["peer"], network["ids"]
    ref = (await jail.post("/v1/referrals", json=referral(ids["otp"]))).json()
    patient = f"Patient/{ref['patient_id']}"
    consent = {
        "person": {"patient": patient},
        "signed_at": datetime.now(UTC).isoformat(),
        "signed_by": "Dana Rivera (self)",
        "recipients": [ids["jail"]],
    }
    r = await otp.post("/v1/consents", json=consent)
    assert r.status_code == 201, r.text
    assert r.json()["patient_id"] == ref["patient_id"]
    # Not a party: the Patient is not known to it.
    r = await peer.post("/v1/consents", json=consent)
    assert r.status_code == 404
    r = await otp.post("/v1/consents", json={**consent, "person": {"family_name": "X"}})
    assert r.status_code == 422
