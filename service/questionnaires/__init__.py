"""Screening and overdose-risk Questionnaires on plain FHIR JSON dicts: validation, scoring,
Observations, a simple UI view and the built-in instruments. No database, no HTTP.

May import only ``service.errors``, the standard library and fhirpathpy (with its antlr4 runtime).
"""
