"""Unit tests of the pure Questionnaire engine (no app, no database)."""
