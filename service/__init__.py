"""Handoff: FHIR R4 warm-handoff referrals, screenings and overdose-prevention records.

Nothing is imported eagerly here; see ``service.app.create_app``.
"""

__version__ = "0.1.0"
