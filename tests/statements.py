"""Counting the SQL a request sends (for tests that a page costs the same whatever its size)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@contextlib.contextmanager
def statements_sent(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements ``engine`` sends inside the block, leaving out the client-status read
    (a process reads it until it remembers the answer, so its count varies)."""
    sent: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if "oauth_client" not in statement:
            sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@contextlib.contextmanager
def parameters_sent(engine: AsyncEngine) -> Iterator[list[tuple[Any, ...]]]:
    """The bound values of each statement ``engine`` sends inside the block."""
    sent: list[tuple[Any, ...]] = []

    def record(_c: Any, _cur: Any, _statement: str, parameters: Any, *_a: Any) -> None:
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        sent.append(tuple(values))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
