"""The request examples Swagger UI offers work as they stand on the demo network: an integrator
who authorizes as a demo client and presses Execute gets a 201, not a validation error."""

from __future__ import annotations

from typing import Any

import pytest

from service.demo import seed_demo

pytestmark = pytest.mark.usefixtures("instruments")

# (path, request schema, demo organization that sends it)
EXAMPLES = [
    ("/v1/assessments", "AssessmentIn", "demo-jail-health"),
    ("/v1/consents", "ConsentIn", "demo-county-jail"),
    ("/v1/referrals", "ReferralIn", "demo-county-jail"),
    ("/v1/naloxone", "NaloxoneIn", "demo-county-jail"),
    ("/v1/overdose-responses", "OverdoseResponseIn", "demo-harm-reduction"),
]


async def test_every_v1_request_schema_with_a_body_has_an_example(app: Any) -> None:
    documented = {schema for _, schema, _ in EXAMPLES}
    for path, operations in app.openapi()["paths"].items():
        for operation in operations.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if not path.startswith("/v1") or body is None:
                continue
            name = body["schema"]["$ref"].rsplit("/", 1)[-1]
            example = app.openapi()["components"]["schemas"][name].get("example")
            if example is not None:
                assert name in documented, f"{name}'s example is not tried here"


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
