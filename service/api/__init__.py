"""The HTTP edge: routes, dependencies, error handlers, middleware. No SQL, no mapping logic.

May import service.workflows, service.auth, service.fhir (outcome, bundle), service.errors.
"""
