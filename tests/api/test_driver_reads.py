"""Hot SELECTs on the asyncpg connection itself (``storage.driver.fetch_all``): the same rows
as through SQLAlchemy, only on PostgreSQL read connections in autocommit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import and_, bindparam, event, literal, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage import repository as repo
from service.storage.db import DRIVER_READS, read_connection, write_transaction
from service.storage.driver import fetch_all
from service.storage.repository import resource_t
from service.storage.types import UtcDateTime

FIVE = timedelta(hours=5)


@contextlib.contextmanager
def sqlalchemy_sent(engine: AsyncEngine) -> Iterator[list[str]]:
    """What went through SQLAlchemy only (statements_sent sees the driver's too)."""
    sent: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _seed(engine: AsyncEngine) -> list[repo.StoredResource]:
    made = []
    async with write_transaction(engine) as conn:
        for n in range(3):
            stored = repo.StoredResource(
                "Organization",
                f"org-{n}",
                1,
                datetime(2026, 1, 1, 10, n, tzinfo=UTC),
                False,
                f'{{"resourceType":"Organization","id":"org-{n}","name":"Ünïcode {n}"}}',
            )
            await repo.write_version(conn, stored=stored, method="POST", content=None, index=[])
            made.append(stored)
    return made


# A statement with string and instant binds, one embedded in it, and an instant, a boolean
# and a labelled expression among its columns.
_STMT = (
    select(
        resource_t.c.id,
        resource_t.c.last_updated,
        resource_t.c.deleted,
        resource_t.c.raw,
        (resource_t.c.id == literal("org-1")).label("is_one"),
    )
    .where(
        and_(
            resource_t.c.resource_type == bindparam("rt"),
            resource_t.c.last_updated >= bindparam("since", type_=UtcDateTime()),
        )
    )
    .order_by(resource_t.c.id)
)


async def test_the_same_rows_as_sqlalchemy_and_no_sqlalchemy_execution(
    engine: AsyncEngine,
) -> None:
    await _seed(engine)
    # 10:01Z, given in another zone: the instant bind is processed as SQLAlchemy does.
    params = {"rt": "Organization", "since": datetime(2026, 1, 1, 5, 1, tzinfo=timezone(-FIVE))}
    async with read_connection(engine) as conn:
        expected = [tuple(r) for r in (await conn.execute(_STMT, params)).all()]
        with sqlalchemy_sent(engine) as sent:
            rows = [tuple(r) for r in await fetch_all(conn, _STMT, params)]
    assert rows == expected and [r[0] for r in rows] == ["org-1", "org-2"]
    assert all(r[1].utcoffset() == timedelta(0) for r in rows)  # instants come back in UTC
    assert [r[4] for r in rows] == [True, False]
    assert rows[0][3].endswith('"name":"Ünïcode 1"}')
    # On PostgreSQL the driver ran it: SQLAlchemy sent nothing.
    assert len(sent) == (0 if engine.dialect.name == "postgresql" else 1)


async def test_in_a_write_transaction_once_begun_and_inside_it(engine: AsyncEngine) -> None:
    """The first statement of a write transaction goes through SQLAlchemy, which begins the
    transaction; later ones may run on the driver connection, inside that transaction: they
    see its uncommitted rows, and roll back with it."""
    await _seed(engine)
    params = {"rt": "Organization", "since": datetime(2026, 1, 1, tzinfo=UTC)}
    added = repo.StoredResource(
        "Organization", "org-9", 1, datetime(2026, 1, 2, tzinfo=UTC), False, "{}"
    )
    with pytest.raises(RuntimeError):
        async with write_transaction(engine) as conn:
            with sqlalchemy_sent(engine) as first:
                assert len(await fetch_all(conn, _STMT, params)) == 3
            assert [x for x in first if x.startswith("SELECT")]  # through SQLAlchemy
            await repo.write_version(conn, stored=added, method="POST", content=None, index=[])
            with sqlalchemy_sent(engine) as later:
                rows = await fetch_all(conn, _STMT, params)
            assert [r[0] for r in rows] == ["org-0", "org-1", "org-2", "org-9"]
            if engine.dialect.name == "postgresql":
                assert later == []  # on the driver, in the transaction
            raise RuntimeError("roll back")
    async with read_connection(engine) as conn:
        assert len(await fetch_all(conn, _STMT, params)) == 3  # org-9 rolled back


async def test_expanding_parameters_go_through_sqlalchemy(engine: AsyncEngine) -> None:
    await _seed(engine)
    expanding = select(resource_t.c.id).where(resource_t.c.id.in_(bindparam("ids", expanding=True)))
    async with read_connection(engine) as conn:
        with sqlalchemy_sent(engine) as sent:
            rows = await fetch_all(conn, expanding, {"ids": ["org-0", "org-2"]})
        assert sorted(r[0] for r in rows) == ["org-0", "org-2"]
        assert [x for x in sent if x != "BEGIN"] and "IN" in sent[-1]  # SQLite: BEGIN first


async def test_the_read_mark_does_not_outlive_the_checkout(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    async with read_connection(engine) as conn:
        assert conn.info.get(DRIVER_READS)
        info = conn.info  # the pooled connection's: reused by the next checkout
    assert DRIVER_READS not in info


async def test_arguments_as_sqlalchemy_takes_them(engine: AsyncEngine) -> None:
    """A bind's default stands when the caller gives no value, a required bind without one
    fails as through SQLAlchemy, and a value computed per execution goes through SQLAlchemy."""
    await _seed(engine)
    defaulted = select(resource_t.c.id).where(
        resource_t.c.id == bindparam("which", value="org-2", required=False)
    )
    async with read_connection(engine) as conn:
        assert [r[0] for r in await fetch_all(conn, defaulted)] == ["org-2"]
        assert [r[0] for r in await fetch_all(conn, defaulted, {"which": "org-0"})] == ["org-0"]
        with pytest.raises(SQLAlchemyError, match="'since'"):  # a programming error
            await fetch_all(conn, _STMT, {"rt": "Organization"})
    computed = select(resource_t.c.id).where(
        resource_t.c.id == bindparam("which", callable_=lambda: "org-1")
    )
    async with read_connection(engine) as conn:
        with sqlalchemy_sent(engine) as sent:
            assert [r[0] for r in await fetch_all(conn, computed)] == ["org-1"]
        assert [x for x in sent if x != "BEGIN"]
