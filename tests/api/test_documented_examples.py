"""The request examples Swagger UI offers work as they stand on the demo network: an integrator
who authorizes as a demo client and presses Execute gets a 201, not a validation error."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from service.api.routes.v1_views import AppointmentView, ConsentView, ReferralView
from service.demo import seed_demo

pytestmark = pytest.mark.usefixtures("instruments")

# (path, request schema, demo organization that sends it)
EXAMPLES = [
    ("/v1/assessments", "AssessmentIn", "demo-jail-health"),
    ("/v1/consents", "ConsentIn", "demo-county-jail"),
    ("/v1/referrals", "ReferralIn", "demo-county-jail"),
    ("/v1/bookings", "BookingIn", "demo-county-jail"),
    ("/v1/naloxone", "NaloxoneIn", "demo-county-jail"),
    ("/v1/overdose-responses", "OverdoseResponseIn", "demo-harm-reduction"),
    ("/v1/webhooks", "WebhookIn", "demo-county-jail"),
    ("/v1/follow-up-plans", "FollowUpPlanIn", "demo-peer-support"),
]


# Requests on a referral or consent that the first examples made.
FOLLOW_UPS = (
    "ReleaseChangeIn",
    "ReReferIn",
    "CancelIn",
    "RevokeIn",
    "BookingChangeIn",
    "TransferIn",
    "ReleaseRecordIn",
    "DomainIn",
    "AcceptingIn",
    "AppointmentIn",
    "MarkIn",
    "ContactIn",
)


async def test_every_v1_request_body_has_an_example_that_is_tried(app: Any) -> None:
    tried = {schema for _, schema, _ in EXAMPLES} | set(FOLLOW_UPS)
    schemas = app.openapi()["components"]["schemas"]
    for path, operations in app.openapi()["paths"].items():
        for operation in operations.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if not path.startswith("/v1") or body is None:
                continue
            name = body["schema"]["$ref"].rsplit("/", 1)[-1]
            assert "example" in schemas[name], f"{path}: {name} has no example"
            assert name in tried, f"{name}'s example is not tried here"


async def test_the_follow_up_examples_work_on_what_the_first_ones_made(
    app: Any, org_client: Any
) -> None:
    """Change the release, let the receiver reject, re-refer, cancel; revoke the consent."""
    await seed_demo(app)
    schemas = app.openapi()["components"]["schemas"]

    def example(name: str) -> Any:
        return schemas[name]["example"]

    jail = await org_client("Organization/demo-county-jail")
    otp = await org_client("Organization/demo-otp")
    made = (await jail.post("/v1/referrals", json=example("ReferralIn"))).json()
    ReferralView.model_validate(made)  # the documented 201 is what is sent, field for field
    url = f"/v1/referrals/{made['referral_id']}"
    r = await jail.patch(url, json=example("ReleaseChangeIn"))
    assert r.status_code == 200, r.text
    ReferralView.model_validate(r.json())
    task = (await otp.get(f"/fhir/Task/{made['task_id']}")).json()
    reason = {
        "text": "No intake slots",
        "coding": [
            {
                "system": "https://handoff.dev/fhir/CodeSystem/referral-status-reason",
                "code": "at-capacity",
            }
        ],
    }
    r = await otp.put(
        f"/fhir/Task/{task['id']}",
        json={**task, "status": "rejected", "statusReason": reason},
        headers={
            "Content-Type": "application/fhir+json",
            "If-Match": f'W/"{task["meta"]["versionId"]}"',
        },
    )
    assert r.status_code == 200, r.text
    r = await jail.post(f"{url}/re-refer", json=example("ReReferIn"))
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == "Organization/demo-peer-support"
    ReferralView.model_validate(r.json())
    r = await jail.post(f"{url}/cancel", json=example("CancelIn"))
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    ReferralView.model_validate(r.json())
    listed = await jail.get("/v1/referrals")
    assert listed.status_code == 200 and listed.json(), listed.text
    TypeAdapter(list[ReferralView]).validate_python(listed.json())
    view = ReferralView.model_validate((await jail.get(url)).json())
    assert view.timeline and [e.status for e in view.timeline][-1] == "cancelled"
    consent = (await jail.post("/v1/consents", json=example("ConsentIn"))).json()
    ConsentView.model_validate(consent)
    r = await jail.post(f"/v1/consents/{consent['consent_id']}/revoke", json=example("RevokeIn"))
    assert r.status_code == 200 and r.json()["status"] == "inactive", r.text
    ConsentView.model_validate(r.json())


async def test_the_appointment_examples_work_on_the_demo(app: Any, org_client: Any) -> None:
    """The treatment program accepts the example referral, books the example appointment at
    its own site, reschedules it with the same example and cancels it."""
    await seed_demo(app)
    schemas = app.openapi()["components"]["schemas"]
    jail = await org_client("Organization/demo-county-jail")
    otp = await org_client("Organization/demo-otp")
    made = (await jail.post("/v1/referrals", json=schemas["ReferralIn"]["example"])).json()
    task = (await otp.get(f"/fhir/Task/{made['task_id']}")).json()
    r = await otp.put(
        f"/fhir/Task/{task['id']}",
        json={**task, "status": "accepted"},
        headers={
            "Content-Type": "application/fhir+json",
            "If-Match": f'W/"{task["meta"]["versionId"]}"',
        },
    )
    assert r.status_code == 200, r.text
    url = f"/v1/referrals/{made['referral_id']}/appointments"
    r = await otp.post(url, json=schemas["AppointmentIn"]["example"])
    assert r.status_code == 201, r.text
    booked = AppointmentView.model_validate(r.json())
    assert booked.location == "Location/demo-otp-site" and booked.location_name
    one = f"{url}/{booked.appointment_id}"
    r = await otp.patch(one, json=schemas["AppointmentIn"]["example"])
    assert r.status_code == 200, r.text
    r = await otp.post(f"{one}/cancel", json=schemas["MarkIn"]["example"])
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    view = ReferralView.model_validate(
        (await jail.get(f"/v1/referrals/{made['referral_id']}")).json()
    )
    assert view.appointments and view.appointments[0].details_withheld
    r = await otp.post(
        f"/v1/people/{made['patient_id']}/contacts", json=schemas["ContactIn"]["example"]
    )
    assert r.status_code == 201 and r.json()["reached"] is True, r.text


@pytest.mark.parametrize(("path", "schema", "sender"), EXAMPLES)
async def test_the_documented_example_is_accepted_on_the_demo(
    app: Any, org_client: Any, path: str, schema: str, sender: str
) -> None:
    organizations = await seed_demo(app)
    assert organizations["otp"] == "demo-otp"  # the ids the examples name
    example = app.openapi()["components"]["schemas"][schema]["example"]
    client = await org_client(f"Organization/{sender}")
    r = await client.post(path, json=example)
    assert r.status_code == 201, r.text


async def test_the_directory_examples_work_on_the_demo(app: Any, org_client: Any) -> None:
    """The README's directory query finds the demo OTP first; the OTP says it is full with
    AcceptingIn's example, and the same query then offers the next one."""
    await seed_demo(app)
    jail = await org_client("Organization/demo-county-jail")
    query = {
        "service": "moud-buprenorphine",
        "near": "39.9612,-82.9988",
        "within_km": "10",
        "accepting": "true",
        "language": "es",
    }
    r = await jail.get("/v1/directory", params=query)
    assert r.status_code == 200, r.text
    assert [e["healthcare_service"] for e in r.json()] == [
        "HealthcareService/demo-otp-service-0",
        "HealthcareService/demo-sud-treatment-service-0",
    ]
    example = app.openapi()["components"]["schemas"]["AcceptingIn"]["example"]
    otp = await org_client("Organization/demo-otp")
    r = await otp.put("/v1/directory/services/demo-otp-service-0/accepting", json=example)
    assert r.status_code == 200, r.text
    r = await jail.get("/v1/directory", params=query)
    assert [e["healthcare_service"] for e in r.json()] == [
        "HealthcareService/demo-sud-treatment-service-0"
    ]


async def test_the_custody_examples_work_on_the_booking_example(app: Any, org_client: Any) -> None:
    """Change the expected release, transfer, release."""
    await seed_demo(app)
    schemas = app.openapi()["components"]["schemas"]
    jail = await org_client("Organization/demo-county-jail")
    made = (await jail.post("/v1/bookings", json=schemas["BookingIn"]["example"])).json()
    url = f"/v1/bookings/{made['booking_number']}"
    r = await jail.patch(url, json=schemas["BookingChangeIn"]["example"])
    assert r.status_code == 200, r.text
    r = await jail.post(f"{url}/transfers", json=schemas["TransferIn"]["example"])
    assert r.status_code == 200, r.text
    r = await jail.post(f"{url}/release", json=schemas["ReleaseRecordIn"]["example"])
    assert r.status_code == 200 and r.json()["status"] == "released", r.text
