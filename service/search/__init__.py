"""FHIR search: parameter definitions, index extraction, query parsing and SQL building.

May import ``service.storage`` (tables) and ``service.errors``; never the HTTP layer.
"""
