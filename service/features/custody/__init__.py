"""Custody stays (booking, transfers, release) from the JMS over /v1 and HL7 v2 ADT, and the
release driving the warm handoff (service.features.custody.handoff)."""

from __future__ import annotations

from service.workflows.rules import RuleSet


def register(rules: RuleSet) -> None:
    from service.features.custody import handoff

    handoff.register(rules)
