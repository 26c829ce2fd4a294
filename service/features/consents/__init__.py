"""Part 2 consents as the JMS records, revokes and views them (``records``), and the accounting
of disclosures (``disclosures``). The consent SQL the disclosure policy runs on is the engine's
(``service.workflows.consents``)."""
