"""FHIR Subscriptions (R4 Backport IG 1.1.0, rest-hook): topics, filters,
the Subscription write rules, notification Bundles, ``$status``/``$events`` and the delivery
worker that reads the change feed."""

from service.features.subscriptions.rules import register

__all__ = ["register"]
