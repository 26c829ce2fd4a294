"""The service directory: who offers which service where, and whether they take new patients.

- ``vocabulary``: the service codes directory entries and referrals share
  (``service.fhir.service_codes``) and the write rules that keep directory entries on them;
- ``maintenance``: the accepting-new-patients flag, kept by the organization that provides the
  service (through FHIR or ``PUT /v1/directory/services/{id}/accepting``);
- ``query``: ``GET /v1/directory``, services ranked by distance;
- ``hsds`` and ``importer``: ``handoff directory import`` of an Open Referral HSDS 3.0 package.
"""

from __future__ import annotations

from service.workflows.rules import RuleSet


def register(rules: RuleSet) -> None:
    from service.features.directory import maintenance, vocabulary

    vocabulary.register(rules)
    maintenance.register(rules)
