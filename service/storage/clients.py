"""Client registry, used client assertions and the shared signing key ring."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.storage.tables import OAuthClient, SigningKeyRingRow, UsedAssertion

# Changes to a client's status are announced here (see client_status).
CLIENT_STATUS_CHANNEL = "handoff_client_status"

client_t = cast(Table, OAuthClient.__table__)  # type: ignore[attr-defined]
jti_t = cast(Table, UsedAssertion.__table__)  # type: ignore[attr-defined]
ring_t = cast(Table, SigningKeyRingRow.__table__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    name: str
    organization: str | None
    scopes: str
    secret_hash: str | None
    jwks: dict[str, Any] | None
    jwks_uri: str | None
    disabled: bool
    created: datetime

    def public(self) -> dict[str, Any]:
        """What `handoff clients list` shows: never the secret hash or keys."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "organization": self.organization,
            "scopes": self.scopes,
            "auth": "jwks_uri"
            if self.jwks_uri
            else ("jwks" if self.jwks else ("secret" if self.secret_hash else "none")),
            "disabled": self.disabled,
            "created": self.created.isoformat(),
        }


_COLUMNS = (
    client_t.c.client_id,
    client_t.c.name,
    client_t.c.organization,
    client_t.c.scopes,
    client_t.c.secret_hash,
    client_t.c.jwks,
    client_t.c.jwks_uri,
    client_t.c.disabled,
    client_t.c.created,
)


async def add_client(conn: AsyncConnection, record: ClientRecord) -> None:
    await conn.execute(
        insert(client_t).values(
            client_id=record.client_id,
            name=record.name,
            organization=record.organization,
            scopes=record.scopes,
            secret_hash=record.secret_hash,
            jwks=record.jwks,
            jwks_uri=record.jwks_uri,
            disabled=record.disabled,
            created=record.created,
        )
    )
    await _announce(conn, record.client_id)


async def add_client_if_absent(engine: AsyncEngine, record: ClientRecord) -> ClientRecord:
    """Register ``record`` unless its client id exists; return the stored one (race-safe)."""
    from service.storage.db import read_connection, write_transaction

    try:
        async with write_transaction(engine) as conn:
            if await get_client(conn, record.client_id) is None:
                await add_client(conn, record)
    except IntegrityError:
        pass  # another request or replica registered it first
    async with read_connection(engine) as conn:
        stored = await get_client(conn, record.client_id)
    assert stored is not None
    return stored


async def get_client(conn: AsyncConnection, client_id: str) -> ClientRecord | None:
    row = (await conn.execute(select(*_COLUMNS).where(client_t.c.client_id == client_id))).first()
    return ClientRecord(*row) if row else None


async def list_clients(conn: AsyncConnection) -> list[ClientRecord]:
    rows = (await conn.execute(select(*_COLUMNS).order_by(client_t.c.created))).all()
    return [ClientRecord(*r) for r in rows]


async def set_disabled(conn: AsyncConnection, client_id: str, disabled: bool) -> bool:
    result = await conn.execute(
        update(client_t).where(client_t.c.client_id == client_id).values(disabled=disabled)
    )
    await _announce(conn, client_id)
    return bool(result.rowcount)


# What this process does at once when it changes a client (client_status.py forgets it).
_local_listeners: list[Callable[[str], None]] = []


def on_local_change(listener: Callable[[str], None]) -> None:
    """Call ``listener(client_id)`` whenever this process changes a client's status."""
    _local_listeners.append(listener)


async def _announce(conn: AsyncConnection, client_id: str) -> None:
    """Tell every process that remembers client status (client_status.py): on PostgreSQL by a
    notification that is delivered when this transaction commits; in this process at once."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_notify(CLIENT_STATUS_CHANNEL, client_id)))
    for listener in _local_listeners:
        listener(client_id)


# Asked on every authenticated request: built once (its SQL cache key is then memoised too).
_IS_ACTIVE = select(client_t.c.disabled).where(client_t.c.client_id == bindparam("client_id"))


async def is_active(conn: AsyncConnection, client_id: str) -> bool:
    row = (await conn.execute(_IS_ACTIVE, {"client_id": client_id})).first()
    return row is not None and not row[0]


class DatabaseJtiStore:
    """``JtiStore`` on a unique row: a replayed assertion loses the insert on any replica."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def remember(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        from service.storage.db import write_transaction

        try:
            async with write_transaction(self.engine) as conn:
                await conn.execute(
                    insert(jti_t).values(client_id=client_id, jti=jti, expires_at=expires_at)
                )
        except IntegrityError:
            return False
        return True


async def purge_used_assertions(conn: AsyncConnection, before: datetime) -> int:
    result = await conn.execute(delete(jti_t).where(jti_t.c.expires_at < before))
    return int(result.rowcount or 0)


async def lock_ring(conn: AsyncConnection) -> None:
    """Serialise key rotations across replicas (SQLite's write lock already does)."""
    from service.storage.repository import lock_key

    await lock_key(conn, "signing_key_ring")


async def load_ring(conn: AsyncConnection, name: str = "default") -> dict[str, Any] | None:
    row = (await conn.execute(select(ring_t.c.ring).where(ring_t.c.name == name))).first()
    return dict(row[0]) if row else None


async def save_ring(
    conn: AsyncConnection, ring: dict[str, Any], *, updated: datetime, name: str = "default"
) -> None:
    existing = await load_ring(conn, name)
    if existing is None:
        await conn.execute(insert(ring_t).values(name=name, ring=ring, updated=updated))
    else:
        await conn.execute(
            update(ring_t).where(ring_t.c.name == name).values(ring=ring, updated=updated)
        )


async def create_ring_if_absent(
    engine: AsyncEngine, ring: dict[str, Any], *, updated: datetime, name: str = "default"
) -> dict[str, Any]:
    """Store ``ring`` unless one exists; return whichever is stored (race-safe)."""
    from service.storage.db import read_connection, write_transaction

    try:
        async with write_transaction(engine) as conn:
            if await load_ring(conn, name) is None:
                await conn.execute(insert(ring_t).values(name=name, ring=ring, updated=updated))
    except IntegrityError:
        pass  # another replica created it first
    async with read_connection(engine) as conn:
        stored = await load_ring(conn, name)
    assert stored is not None
    return stored
