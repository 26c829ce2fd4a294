"""The demo's history (service/demo_history.py) written through the use cases, once, as its
plan says (tests/unit/test_demo_history_plan.py), with historical clinical times; and the
README walkthrough's follow-ups and appointment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.demo import seed_demo
from service.demo_history import BOOKING_PREFIX, plan_history
from service.features.assessments.rules import ensure_builtin_content
from service.settings import Settings
from service.storage.repository import index_t


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Two months (the programs close the windows of releases over a month old) keep the test
    # short; `serve --demo` seeds twelve (tests/unit/test_demo_history_plan.py plans them).
    return settings.model_copy(update={"demo": True, "demo_history_months": 2})


async def _bookings(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            select(func.count(func.distinct(index_t.c.resource_id))).where(
                index_t.c.resource_type == "Encounter",
                index_t.c.param == "identifier",
                index_t.c.value.like(f"{BOOKING_PREFIX}%"),
            )
        )
    return int(found or 0)


def _milestone(task: dict[str, Any]) -> tuple[str | None, datetime | None]:
    status = task.get("businessStatus") or {}
    code = next((c.get("code") for c in status.get("coding", [])), None)
    at = next((e["valueDateTime"] for e in status.get("extension", [])), None)
    return code, datetime.fromisoformat(at) if at else None


async def test_serve_demo_seeds_the_history_once_for_the_walkthrough(
    app: Any, engine: AsyncEngine, client: Any, org_client: Any
) -> None:
    settings = app.state.settings
    await ensure_builtin_content(engine, settings, app.state.rules)
    now = datetime.now(UTC)
    await seed_demo(app)
    first = app.state.demo_history
    plan = plan_history(now, settings.demo_history_months)
    assert first.stories == len(plan) == await _bookings(engine)
    assert first.releases == sum(s.released_at is not None for s in plan)
    assert first.transfers == sum(s.transferred_at is not None for s in plan)
    assert first.screenings == sum(s.screened_at is not None for s in plan)
    assert first.referrals == sum(len(s.referrals) for s in plan)
    assert first.contacts == sum(len(r.contacts) for s in plan for r in s.referrals)
    assert first.naloxone_kits == sum(s.naloxone for s in plan)
    appointments = [r.appointment for s in plan for r in s.referrals if r.appointment]
    assert first.appointments == len(appointments)
    assert first.attended == sum(a[1] == "attended" for a in appointments)
    assert first.missed == sum(a[1] == "no-show" for a in appointments)
    assert first.attended + first.missed < first.appointments  # the walkthrough's is booked

    # Clinical times are the historical ones: the milestones' occurred-at, not the record time.
    r = await client.get("/fhir/Task", params={"code": "fulfill", "_count": 500})
    assert r.status_code == 200, r.text
    tasks = [e["resource"] for e in r.json()["entry"]]
    milestones = [_milestone(t) for t in tasks]
    month_ago = now - timedelta(days=28)
    for codes in (
        ["accepted"],
        ["first-appointment-attended"],
        ["closed-engaged", "lost-to-follow-up"],
    ):
        assert any(c in codes and at and at < month_ago for c, at in milestones), codes
    assert any(c == "declined-by-recipient" for c, _ in milestones)

    # The walkthrough (README: Follow-up after release).
    peer = await org_client("Organization/demo-peer-support")
    r = await peer.get("/v1/follow-ups", params={"limit": 200})
    assert r.status_code == 200, r.text
    items = r.json()
    buckets = {i["bucket"] for i in items}
    assert {"overdue", "upcoming"} <= buckets
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    if midnight - now > timedelta(minutes=20):  # seeded and read well before the day ends
        assert "due-today" in buckets
    # Windows from releases a month ago and more were closed by the program.
    assert all(datetime.fromisoformat(i["released_at"]) > now - timedelta(days=32) for i in items)
    # The clinical time is the release, not when the demo was seeded.
    assert min(datetime.fromisoformat(i["released_at"]) for i in items) < now - timedelta(days=3)
    treatment = await org_client("Organization/demo-sud-treatment")
    r = await treatment.get("/fhir/Appointment", params={"status": "booked"})
    assert r.status_code == 200, r.text
    starts = [datetime.fromisoformat(e["resource"]["start"]) for e in r.json().get("entry", [])]
    assert any(start > now for start in starts)

    # Seeding again (a restart of `serve --demo`) writes nothing twice.
    await seed_demo(app)
    second = app.state.demo_history
    assert second.stories == second.referrals == second.contacts == 0
    assert await _bookings(engine) == first.stories
