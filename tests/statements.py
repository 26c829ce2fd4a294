"""Counting the SQL a request sends (for tests that a page costs the same whatever its size).

Statements go through SQLAlchemy (its ``before_cursor_execute`` event) or, the hottest ones on
PostgreSQL, straight to the asyncpg connection (``storage.driver.statement_listeners``): both
are recorded, in the order they are sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage import driver


@contextlib.contextmanager
def _listening(engine: AsyncEngine, record: Callable[[str, Sequence[Any]], None]) -> Iterator[None]:
    def through_sqlalchemy(_c: Any, _cur: Any, statement: str, parameters: Any, *_a: Any) -> None:
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        record(statement, tuple(values))

    event.listen(engine.sync_engine, "before_cursor_execute", through_sqlalchemy)
    driver.statement_listeners.append(record)
    try:
        yield
    finally:
        driver.statement_listeners.remove(record)
        event.remove(engine.sync_engine, "before_cursor_execute", through_sqlalchemy)


@contextlib.contextmanager
def sent_with_parameters(engine: AsyncEngine) -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Each statement ``engine`` sends inside the block, with its bound values (positional)."""
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def record(statement: str, values: Sequence[Any]) -> None:
        sent.append((statement, tuple(values)))

    with _listening(engine, record):
        yield sent


@contextlib.contextmanager
def statements_sent(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements ``engine`` sends inside the block, leaving out the client-status read
    (a process reads it until it remembers the answer, so its count varies)."""
    sent: list[str] = []

    def record(statement: str, _values: Sequence[Any]) -> None:
        if "oauth_client" not in statement:
            sent.append(statement)

    with _listening(engine, record):
        yield sent


@contextlib.contextmanager
def parameters_sent(engine: AsyncEngine) -> Iterator[list[tuple[Any, ...]]]:
    """The bound values of each statement ``engine`` sends inside the block."""
    sent: list[tuple[Any, ...]] = []

    def record(_statement: str, values: Sequence[Any]) -> None:
        sent.append(tuple(values))

    with _listening(engine, record):
        yield sent
