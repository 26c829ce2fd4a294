"""What a database failure means for the request that met it, whichever way it was raised.

SQLAlchemy wraps the driver's exceptions; the hot statements that run on the asyncpg connection
itself (``storage.driver``) and the audit group commit raise asyncpg's own. The HTTP layer asks
``classify`` and answers from the verdict, without knowing either library's exceptions.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from service.storage.db import cost_refusal

Verdict = Literal["timeout", "size", "unstorable-text", "unavailable"]

# What the asyncpg connection itself raises when the server is gone, shutting down or out of
# connections: SQLAlchemy's wrapping says the same of its own statements.
_DRIVER_UNAVAILABLE = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InsufficientResourcesError,
)
# PostgreSQL's refusals of text it cannot store (U+0000): input checks catch it first
# (service.domain.text); this keeps a path they miss a client error, not a server error.
_UNSTORABLE_TEXT = {"22P05", "22021"}  # untranslatable_character, character_not_in_repertoire


def _unstorable_text(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):  # raised on the driver connection itself
        return getattr(exc, "sqlstate", None) in _UNSTORABLE_TEXT
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _UNSTORABLE_TEXT


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (PoolTimeoutError, InterfaceError, *_DRIVER_UNAVAILABLE)):
        return True
    if isinstance(exc, OperationalError | DBAPIError) and getattr(
        exc, "connection_invalidated", False
    ):
        return True
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, OSError | ConnectionError)


def classify(exc: BaseException) -> Verdict | None:
    """``timeout`` / ``size``: the request asked too much (``db.cost_refusal``; asked first, as
    SQLite reports an interrupted statement as an OperationalError); ``unstorable-text``: a
    value the database cannot store; ``unavailable``: an outage, worth a retry. None: a bug."""
    if _unstorable_text(exc):
        return "unstorable-text"
    if (refusal := cost_refusal(exc)) is not None:
        return refusal
    if _unavailable(exc):
        return "unavailable"
    return None
