"""The engine: resource writes and reads with their transactions, access, the disclosure
policy, consent SQL, audit, the rule set, idempotency and bundles.

Features (``service.features``) build on it and register their write rules at start-up; the
engine never imports a feature. May import service.fhir, service.search, service.storage,
service.auth (types), service.errors.
"""
