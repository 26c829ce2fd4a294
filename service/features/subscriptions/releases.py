"""Which referrals the release-imminent topic fires for: the one place that decides when a
person's release is imminent and who has not accepted the referral.

Today the expected release is the referral's (``ServiceRequest.occurrencePeriod.start``, as
the JMS sent it) and "not accepted" is its Task's status (features.referrals.escalations, the
same rule as the JMS escalation list).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service.features.referrals import escalations
from service.fhir import exact_json
from service.storage import repository as repo
from service.workflows.context import WorkflowContext


async def imminent_referrals(
    conn: AsyncConnection, ctx: WorkflowContext, *, hours: int
) -> list[dict[str, Any]]:
    """The current referral Tasks (as stored) of the referrals ``ctx``'s organization made
    whose person is released within ``hours`` hours (or was, within the last day) and whose
    Task nobody has accepted."""
    out: list[dict[str, Any]] = []
    for view in await escalations(ctx, within=timedelta(hours=hours)):
        task_id = view.get("task_id")
        if not task_id:
            continue
        stored = await repo.get_current(conn, "Task", task_id)
        if stored is None or stored.deleted or stored.raw is None:
            continue
        out.append(exact_json.loads(stored.raw))
    return out
