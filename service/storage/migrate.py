"""Alembic, driven from code: ``handoff migrate``, start-up checks and ``/readyz``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(migrations_dir() / "alembic.ini"))
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations (blocking; call from a thread when an event loop is running)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


@lru_cache
def head_revision() -> str | None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


async def current_revision(conn: AsyncConnection) -> str | None:
    try:
        row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
    except DBAPIError:
        await conn.rollback()
        return None
    return str(row[0]) if row else None


async def database_state(engine: AsyncEngine) -> Literal["ready", "unreachable", "not migrated"]:
    """What ``/readyz`` reports: the database answers and carries the code's schema revision."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            revision = await current_revision(conn)
    except Exception:  # any failure to reach the database means "not ready"
        return "unreachable"
    return "ready" if revision == head_revision() else "not migrated"
