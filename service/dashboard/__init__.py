"""The program dashboard (/dashboard): pages for people, signed in with the organization's
OpenID provider (or the demo sign-in), showing what GET /v1/measures answers for them.

Sits above the HTTP API (may import service.api, never the reverse); writes no SQL.
"""
