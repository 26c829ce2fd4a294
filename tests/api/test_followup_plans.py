"""/v1/follow-up-plans: a peer or treatment program without FHIR publishes and changes its
follow-up plan; it is stored as the program's PlanDefinition and applies to the releases
recorded after it, with the scopes and tenancy of the FHIR path."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from service.api.routes.v1_followups import FollowUpPlanView
from tests.api.test_custody import at
from tests.api.test_followups import accepted, follow_ups, instant, release
from tests.api.test_referrals import network  # noqa: F401
from tests.builders import FHIR_JSON

pytestmark = pytest.mark.usefixtures("instruments")

PLAN: dict[str, Any] = {
    "name": "Call the first evening, visit in three days",
    "actions": [
        {"title": "Visit within 3 days", "after": {"value": 3, "unit": "days"}},
        {"title": "Call within 12 hours", "after": {"value": 12, "unit": "hours"}},
    ],
}


async def test_a_plan_published_over_v1_applies_to_later_releases(
    network: dict[str, Any],  # noqa: F811
) -> None:
    jail, peer, ids = network["jail"], network["peer"], network["ids"]
    r = await peer.post("/v1/follow-up-plans", json=PLAN, headers={"Idempotency-Key": "plan-1"})
    assert r.status_code == 201, r.text
    plan = FollowUpPlanView.model_validate(r.json()).model_dump()
    assert plan["current"] and not plan["builtin"] and plan["version"] == 1
    assert [a["title"] for a in plan["actions"]] == ["Call within 12 hours", "Visit within 3 days"]
    assert plan["actions"][0]["after"] == {"value": 12, "unit": "hours"}
    again = await peer.post("/v1/follow-up-plans", json=PLAN, headers={"Idempotency-Key": "plan-1"})
    assert again.status_code == 201 and again.json()["plan_id"] == plan["plan_id"]
    # Stored as the program's PlanDefinition, the same as one published through FHIR.
    fhir = (await peer.get(f"/fhir/PlanDefinition/{plan['plan_id']}")).json()
    assert fhir["status"] == "active"
    assert fhir["useContext"][0]["valueReference"] == {"reference": ids["peer"]}
    assert fhir["action"][0]["timingDuration"]["code"] == "h"
    listed = (await peer.get("/v1/follow-up-plans")).json()
    assert [(p["plan_id"], p["current"]) for p in listed] == [
        (plan["plan_id"], True),
        ("post-release-follow-up", False),
    ]
    # The next release follows it.
    first = await accepted(network, "peer", services=["peer-support"])
    released = at(-1)
    await release(jail, released)
    tasks = await follow_ups(peer, first)
    assert [t["description"] for t in tasks] == ["Call within 12 hours", "Visit within 3 days"]
    assert instant(tasks[0]["restriction"]["period"]["end"]) - instant(released) == timedelta(
        hours=12
    )
    # A change is a new version; the follow-ups already made keep their times.
    changed = {
        **PLAN,
        "actions": [{"title": "Call within 6 hours", "after": {"value": 6, "unit": "hours"}}],
    }
    r = await peer.put(f"/v1/follow-up-plans/{plan['plan_id']}", json=changed)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["actions"][0]["title"] == "Call within 6 hours"
    assert [t["id"] for t in await follow_ups(peer, first)] == [t["id"] for t in tasks]
    assert (await follow_ups(peer, first))[0]["description"] == "Call within 12 hours"
    # Retired, the next releases follow the built-in default again.
    r = await peer.put(f"/v1/follow-up-plans/{plan['plan_id']}", json={**changed, "active": False})
    assert r.status_code == 200 and r.json()["status"] == "retired", r.text
    listed = (await peer.get("/v1/follow-up-plans")).json()
    assert [p["current"] for p in listed] == [False, True]


async def test_plan_validation_scopes_and_tenancy(
    network: dict[str, Any],  # noqa: F811
    org_client: Any,
) -> None:
    peer, otp, ids = network["peer"], network["otp"], network["ids"]
    bad = {**PLAN, "actions": [{"title": "Call", "after": {"value": 0, "unit": "hours"}}]}
    r = await peer.post("/v1/follow-up-plans", json=bad)
    assert r.status_code == 422
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "actions" in str(outcome["issue"][0].get("expression"))
    r = await peer.post("/v1/follow-up-plans", json={**PLAN, "actions": []})
    assert r.status_code == 422 and "actions" in r.text
    twice = {**PLAN, "actions": [PLAN["actions"][0], {**PLAN["actions"][0], "title": "Again"}]}
    r = await peer.post("/v1/follow-up-plans", json=twice)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["actions"]
    late = {**PLAN, "actions": [{"title": "Call", "after": {"value": 400, "unit": "days"}}]}
    r = await peer.post("/v1/follow-up-plans", json=late)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["actions[0].after"]
    for loose in (
        {**PLAN, "active": 0},
        {**PLAN, "actions": [{"title": "C", "after": {"value": "3", "unit": "days"}}]},
    ):
        r = await peer.post("/v1/follow-up-plans", json=loose)  # JSON types as the schema says
        assert r.status_code == 422, r.text
    # Without PlanDefinition create access: 403, as on the FHIR path.
    reader = await org_client(ids["peer"], scopes="system/PlanDefinition.rs")
    r = await reader.post("/v1/follow-up-plans", json=PLAN)
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    assert (await reader.get("/v1/follow-up-plans")).status_code == 200
    # Another organization's plan is not found, and not changed.
    made = (await peer.post("/v1/follow-up-plans", json=PLAN)).json()
    assert (await otp.get(f"/v1/follow-up-plans/{made['plan_id']}")).status_code == 404
    assert (await otp.put(f"/v1/follow-up-plans/{made['plan_id']}", json=PLAN)).status_code == 404
    assert [p["plan_id"] for p in (await otp.get("/v1/follow-up-plans")).json()] == [
        "post-release-follow-up"
    ]
    # The built-in default is read-only.
    r = await peer.put("/v1/follow-up-plans/post-release-follow-up", json=PLAN)
    assert r.status_code == 405, r.text
    # A plan naming another program that that program did not publish never applies to it.
    foreign = (await peer.get(f"/fhir/PlanDefinition/{made['plan_id']}")).json()
    foreign.pop("id")
    foreign["useContext"][0]["valueReference"] = {"reference": ids["otp"]}
    r = await peer.post("/fhir/PlanDefinition", json=foreign, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    listed = (await otp.get("/v1/follow-up-plans")).json()
    assert [(p["plan_id"], p["current"]) for p in listed] == [("post-release-follow-up", True)]
