"""Features: the use cases of one part of the handoff each (one package per feature).

A feature builds on the engine in ``service.workflows`` (resource writes, access, the disclosure
policy, audit, the rule set) and registers its write rules there at start-up; the engine never
imports a feature (an import-linter contract in ``pyproject.toml`` says so).
"""
