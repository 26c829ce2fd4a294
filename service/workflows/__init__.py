"""Use cases: each owns its transaction and calls fhir, search and storage.

May import service.fhir, service.search, service.storage, service.auth (types), service.errors.
"""
