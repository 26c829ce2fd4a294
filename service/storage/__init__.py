"""Persistence only: resource JSON, versions, search index rows and the change sequence.

Imports nothing from ``service.fhir`` or ``service.api``; moves plain dicts and dataclasses.
"""
