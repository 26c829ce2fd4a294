"""OAuth 2.0 / SMART Backend Services: scopes, client assertions, access tokens, signing keys.

Pure library code: no routes, no database. May import ``service.errors`` only; the API layer
and storage call into it (Principal is the only type workflows need).
"""
