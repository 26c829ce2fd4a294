"""Real /v1 answers validate against the response models the OpenAPI publishes for them
(service.api.routes.v1_record_views, extra fields forbidden): what Swagger UI shows is what is
sent. The requests are the OpenAPI's own examples, on the demo network."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from service.api.routes import v1_record_views as views
from service.demo import seed_demo

pytestmark = pytest.mark.usefixtures("instruments")


def valid(model: Any, response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    if isinstance(model, type) and issubclass(model, BaseModel):
        model.model_validate(body)
    else:
        TypeAdapter(model).validate_python(body)
    return body


async def test_every_record_answer_is_what_its_model_says(
    app: Any, org_client: Any, client: Any
) -> None:
    await seed_demo(app)
    examples = {k: v.get("example") for k, v in app.openapi()["components"]["schemas"].items()}
    jail = await org_client("Organization/demo-county-jail")
    health = await org_client("Organization/demo-jail-health")
    harm_reduction = await org_client("Organization/demo-harm-reduction")

    listed = valid(list[views.InstrumentSummary], await jail.get("/v1/instruments"))
    assert {"dast-10", "audit-c", "overdose-risk", "taps"} <= {i["key"] for i in listed}
    for instrument in listed:  # nested groups, bands by sex, enable_when, a triage rule
        valid(views.InstrumentView, await jail.get(f"/v1/instruments/{instrument['key']}"))

    made = valid(
        views.AssessmentView,
        await health.post("/v1/assessments", json=examples["AssessmentIn"]),
        201,
    )
    patient = made["patient_id"]
    valid(list[views.PersonAssessment], await health.get(f"/v1/people/{patient}/assessments"))

    stay = valid(
        views.BookingView, await jail.post("/v1/bookings", json=examples["BookingIn"]), 201
    )
    url = f"/v1/bookings/{stay['booking_number']}"
    valid(views.BookingView, await jail.get(url))
    valid(views.BookingView, await jail.patch(url, json=examples["BookingChangeIn"]))
    valid(views.BookingView, await jail.post(f"{url}/transfers", json=examples["TransferIn"]))
    released = valid(
        views.BookingView, await jail.post(f"{url}/release", json=examples["ReleaseRecordIn"])
    )
    assert released["escalations"] == [] and released["release"] is not None
    valid(views.BookingView, await jail.post(f"{url}/release/cancel"))
    valid(views.BookingView, await jail.post(f"{url}/cancel"))

    kit = valid(
        views.NaloxoneRecordView,
        await jail.post("/v1/naloxone", json=examples["NaloxoneIn"]),
        201,
    )
    anonymous = {**examples["NaloxoneIn"], "anonymous": True}
    anonymous.pop("person", None)
    valid(views.NaloxoneRecordView, await jail.post("/v1/naloxone", json=anonymous), 201)
    valid(
        views.OverdoseResponseView,
        await harm_reduction.post("/v1/overdose-responses", json=examples["OverdoseResponseIn"]),
        201,
    )
    for group_by in ("", "?group_by=month", "?group_by=facility", "?group_by=intercept"):
        figures = valid(views.NaloxoneSummary, await jail.get(f"/v1/naloxone/summary{group_by}"))
        assert bool(figures["groups"]) == bool(group_by)
    prefill = f"/v1/people/{kit['patient_id']}/prefill/overdose-risk"
    at = examples["NaloxoneIn"]["given_at"]
    suggested = valid(views.OverdoseRiskPrefill, await jail.get(prefill, params={"release_at": at}))
    assert suggested["suggestions"], suggested  # the kit was handed over at that "release"

    consent = (await jail.post("/v1/consents", json=examples["ConsentIn"])).json()
    accounting = f"/v1/patients/{consent['patient_id']}/disclosures"
    valid(views.DisclosuresPage, await jail.get(accounting))

    domain = examples["DomainIn"]
    valid(views.IdentityDomain, await client.put("/v1/admin/identity-domains/county", json=domain))
    valid(list[views.IdentityDomain], await client.get("/v1/admin/identity-domains"))


def test_the_disclosure_rows_model_matches_the_csv_columns() -> None:
    from service.api.routes.v1_consents import DISCLOSURES_CSV

    assert DISCLOSURES_CSV.strip().split(",") == list(views.Disclosure.model_fields)
