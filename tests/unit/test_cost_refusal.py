"""Which database errors say that a statement asked too much (answered 400), and which do not
(an outage is a 503, anything else a 500)."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from service.storage.db import cost_refusal


def sqlite_error(sql: str, *params: object, interrupt: bool = False) -> sqlite3.Error:
    conn = sqlite3.connect(":memory:")
    if interrupt:
        conn.set_progress_handler(lambda: 1, 100)
    try:
        conn.execute(sql, params)
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql[:60]!r}... did not fail")


def test_sqlite() -> None:
    counting = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000000) "
        "SELECT count(*) FROM c"
    )
    assert cost_refusal(sqlite_error(counting, interrupt=True)) == "timeout"
    deep = " + ".join(["1"] * 1100)  # "Expression tree is too large (maximum depth 1000)"
    assert cost_refusal(sqlite_error(f"SELECT {deep}")) == "size"
    assert cost_refusal(sqlite_error("SELECT * FROM no_such_table")) is None


@pytest.mark.parametrize(
    ("error", "refusal"),
    [
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), "timeout"),
        # An operator's pg_cancel_backend, or a cancel request: no verdict on the statement.
        (asyncpg.QueryCanceledError("canceling statement due to user request"), None),
        (asyncpg.exceptions.StatementTooComplexError("stack depth limit exceeded"), "size"),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), None),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), None),
    ],
)
def test_postgresql(error: Exception, refusal: str | None) -> None:
    assert cost_refusal(error) == refusal
