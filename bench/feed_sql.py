"""The SQL the service runs for a provider poll, captured from its own code.

``run_search`` is called with a stand-in connection that records the statement instead of
running it; the statement is compiled with the asyncpg dialect the service uses, so the text,
casts and ``$n`` parameter order are those the service sends. Values that vary per request
(owner, cursor position) are captured as sentinels and located in the parameter list.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from service.search.execute import encode_cursor, run_search
from service.search.query import parse_search

_OWNER = "Organization/ZqOWNERqZ"
_TXID = 7_777_777_777_777  # sentinels: valid positions no real feed reaches
_SEQ = 8_888_888_888_888


@dataclass(frozen=True)
class FeedSql:
    sql: str
    params: list[Any]
    owner_at: list[int]
    txid_at: list[int]
    seq_at: list[int]

    def bind(self, *, owner: str, txid: int, seq: int) -> list[Any]:
        values = list(self.params)
        for i in self.owner_at:
            values[i] = owner
        for i in self.txid_at:
            values[i] = txid
        for i in self.seq_at:
            values[i] = seq
        return values

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _NoRows:
    returns_rows = True

    def all(self) -> list[Any]:
        return []


class _Recorder:
    """Just enough of an AsyncConnection for ``run_search``: records what it is asked to run."""

    def __init__(self) -> None:
        self.dialect = asyncpg_dialect()  # type: ignore[no-untyped-call]
        self.info: dict[str, Any] = {}  # not a read connection: statements come to execute
        self.statements: list[Any] = []
        self.parameters: list[dict[str, Any]] = []

    def in_transaction(self) -> bool:
        return False  # so every statement comes to execute, none to the driver connection

    async def execute(self, statement: Any, parameters: dict[str, Any] | None = None) -> _NoRows:
        self.statements.append(statement)
        self.parameters.append(parameters or {})
        return _NoRows()


def poll_params(owner: str, cursor: str, count: int) -> list[tuple[str, str]]:
    """The query parameters of a provider poll, in the order the benchmark sends them."""
    return [("owner", owner), ("status", "requested"), ("_cursor", cursor), ("_count", str(count))]


def capture_feed_sql(*, base_url: str, count: int = 50) -> FeedSql:
    request = parse_search(
        "Task",
        poll_params(_OWNER, encode_cursor(_TXID, _SEQ), count),
        strict=True,
        default_count=50,
        max_count=1000,
    )
    recorder = _Recorder()
    asyncio.run(run_search(recorder, request, base_url=base_url))  # type: ignore[arg-type]
    if len(recorder.statements) != 1:
        raise RuntimeError(f"expected one statement, the feed ran {len(recorder.statements)}")
    compiled = recorder.statements[0].compile(dialect=recorder.dialect)
    assert compiled.positiontup is not None
    values = compiled.construct_params(recorder.parameters[0])
    params = [values[name] for name in compiled.positiontup]
    found = {key: [i for i, v in enumerate(params) if v == key] for key in (_OWNER, _TXID, _SEQ)}
    if not all(found.values()):
        raise RuntimeError(f"sentinels missing from the captured parameters: {params}")
    return FeedSql(
        sql=str(compiled),
        params=params,
        owner_at=found[_OWNER],
        txid_at=found[_TXID],
        seq_at=found[_SEQ],
    )
