"""Program measures (issue #26; clinical-content §5): is the warm handoff working?

* ``definitions``: the measures, their numerators and denominators in words and as SQL over
  the facts; the cascade;
* ``facts``: the maintained fact tables (``measure_release``, ``measure_referral``,
  ``measure_event``), recomputed by a write rule in the writing transaction from the affected
  person's stored resources, and rebuilt whole by ``handoff measures rebuild``;
* ``evaluate``: the report, computed by the database (GROUP BY per stratifier), with
  who-sees-what and small-cell suppression;
* ``fhir``: the ``Measure`` resources and ``$evaluate-measure``'s ``MeasureReport``;
* ``export``: the CSV of ``/v1/measures``.

Bulk API (benchmarks, demo data at scale): build rows from plain values with
``facts.release_row(...)``, ``facts.referral_row(...)`` and ``facts.event_row(...)``, then
``await facts.bulk_insert(conn, releases, referrals, events)`` inside
``storage.db.write_transaction(engine)`` (give a release's referrals in the same call: the
release rows' referral columns, which the administrator's report reads, are set from them).
Rows inserted this way are not derived from resources: a later write about the same person
(or ``handoff measures rebuild``) recomputes that person's rows from what is stored.
"""

from __future__ import annotations

from service.workflows.rules import RuleSet


def register(rules: RuleSet) -> None:
    from service.features.measures import facts

    facts.register(rules)
