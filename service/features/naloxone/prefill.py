"""Suggested answers for the overdose-risk checklist from what is already recorded.

``naloxone-in-hand`` is suggested ``true`` when a naloxone kit was handed to the person
themself (a MedicationDispense, not one a family member received) inside a release window:

* ``release_at`` given: that release, ± 1 day;
* otherwise the person's current or upcoming releases: their referrals' windows
  (``occurrencePeriod``, or start ± 1 day) that ended no more than a day ago.

Nothing is suggested when no kit is found: a missing record is not evidence that the person
has no kit, so the assessor answers. A suggestion is only that: the assessor sees it pre-filled
and may change it; POST /v1/assessments stores whatever the assessor submits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.features.naloxone import facts as facts
from service.fhir.dates import format_instant, shifted
from service.storage.db import read_connection
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

INSTRUMENT = "overdose-risk"
NALOXONE_IN_HAND = "naloxone-in-hand"  # item linkId in overdose-risk.questionnaire.json


def _windows(
    releases: list[facts.Release], release_at: datetime | None, patient: str
) -> list[facts.Release]:
    if release_at is not None:
        at = release_at.astimezone(UTC)
        return [
            facts.Release(
                patient=patient,
                start=at,
                day=release_at.date(),
                low=shifted(at, -facts.DAY),
                high=shifted(at, facts.DAY),
                referrals=(),
                facility=None,
                intercept=None,
            )
        ]
    recent = datetime.now(UTC) - facts.DAY
    return [r for r in releases if r.high >= recent]


async def overdose_risk_prefill(
    ctx: WorkflowContext, patient_id: str, *, release_at: datetime | None
) -> dict[str, Any]:
    patient = f"Patient/{patient_id}"
    async with read_connection(ctx.engine) as conn:
        await wf.read_in(conn, ctx, "Patient", patient_id)  # 404 unless visible
        releases = (
            []
            if release_at is not None
            else await facts.releases(conn, ctx, facts.Span(None, None), patient=patient)
        )
        windows = _windows(releases, release_at, patient)
        kits = (
            await facts.kits(conn, ctx, facts.Span(None, None), patient=patient) if windows else []
        )
    found = [k for k in (facts.kit_in_hand(w, kits) for w in windows) if k is not None]
    answers: dict[str, Any] = {}
    suggestions: dict[str, Any] = {}
    if found:
        kit = max(found, key=lambda k: k.at)
        answers[NALOXONE_IN_HAND] = True
        suggestions[NALOXONE_IN_HAND] = {
            "answer": True,
            "source": kit.resource,
            "handed_over_at": format_instant(kit.at),
            "reason": "A naloxone kit was handed to the person in the release window",
        }
    return {
        "instrument": INSTRUMENT,
        "patient_id": patient_id,
        "release_windows": [
            {
                "referrals": [r.removeprefix("ServiceRequest/") for r in w.referrals],
                "from": format_instant(w.low),
                "to": format_instant(w.high),
            }
            for w in windows
        ],
        "answers": answers,
        "suggestions": suggestions,
    }
