"""search_index: the directory's new search parameters for existing HealthcareServices and
Locations

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-05 11:00:00

HealthcareService gained ``characteristic``, ``communication``, ``eligibility`` and ``program``;
Location gained ``address``, ``address-state``, ``status``, ``type``, ``partof`` and ``near``
(its ``position`` as two ``near`` rows, ``system`` latitude/longitude, degrees in ``number``).
Versions written before have no rows for them, so searches on them would miss those records:
the current version of each gets its rows here (rows already there are replaced, so running it
again changes nothing). The extraction below mirrors ``service.search.extract`` for these
parameters only (a migration must not import the application: it may change).
"""

import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SYSTEM_WIDTH, VALUE_WIDTH = 255, 512
NEW_PARAMS = {
    "HealthcareService": ("characteristic", "communication", "eligibility", "program"),
    "Location": ("address", "address-state", "status", "type", "partof", "near"),
}


def _normalize(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _codings(concepts: Any) -> Iterator[tuple[str | None, str | None, float | None]]:
    for concept in _list(concepts):
        for coding in _list(concept.get("coding") if isinstance(concept, dict) else None):
            if isinstance(coding, dict) and "code" in coding:
                system = coding.get("system")
                yield (
                    system[:SYSTEM_WIDTH] if isinstance(system, str) else None,
                    str(coding["code"])[:VALUE_WIDTH],
                    None,
                )


def _texts(texts: list[Any]) -> Iterator[tuple[str | None, str | None, float | None]]:
    for text in texts:
        if isinstance(text, str):
            yield text[:SYSTEM_WIDTH], _normalize(text)[:VALUE_WIDTH], None


def _address_texts(address: Any) -> list[Any]:
    if not isinstance(address, dict):
        return []
    out = [address.get("text")]
    out += [address.get(k) for k in ("family", "city", "postalCode", "state", "country")]
    out += [address.get("district")]
    for key in ("given", "prefix", "suffix", "line"):
        out += _list(address.get(key))
    return out


def _rows(rtype: str, body: dict[str, Any]) -> Iterator[tuple[str, Any, Any, Any]]:
    """(param, system, value, number) of the new parameters."""
    if rtype == "HealthcareService":
        for param, element in (
            ("characteristic", "characteristic"),
            ("communication", "communication"),
            ("program", "program"),
        ):
            for row in dict.fromkeys(_codings(body.get(element))):
                yield (param, *row)
        texts: list[Any] = []
        for item in _list(body.get("eligibility")):
            if isinstance(item, dict):
                code = item.get("code")
                texts += [code.get("text") if isinstance(code, dict) else None, item.get("comment")]
        for row in dict.fromkeys(_texts(texts)):
            yield ("eligibility", *row)
        return
    address = body.get("address")
    for row in dict.fromkeys(_texts(_address_texts(address))):
        yield ("address", *row)
    state = address.get("state") if isinstance(address, dict) else None
    for row in _texts([state]):
        yield ("address-state", *row)
    if isinstance(body.get("status"), str):
        yield ("status", None, body["status"][:VALUE_WIDTH], None)
    for row in dict.fromkeys(_codings(body.get("type"))):
        yield ("type", *row)
    part_of = body.get("partOf")
    if isinstance(part_of, dict) and isinstance(part_of.get("reference"), str):
        ref = part_of["reference"]
        if "/_history/" in ref and "://" not in ref:
            ref = ref.split("/_history/", 1)[0]
        yield ("partof", None, ref[:VALUE_WIDTH], None)
    position = body.get("position")
    if isinstance(position, dict):
        lat, lon = position.get("latitude"), position.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            yield ("near", "latitude", repr(float(lat)), float(lat))
            yield ("near", "longitude", repr(float(lon)), float(lon))


def upgrade() -> None:
    bind = op.get_bind()
    index = sa.table(
        "search_index",
        *(
            sa.column(name)
            for name in (
                "resource_type",
                "resource_id",
                "version_id",
                "param",
                "system",
                "value",
                "low",
                "high",
                "number",
                "txid",
                "seq",
            )
        ),
    )
    for rtype, params in NEW_PARAMS.items():
        current = bind.execute(
            sa.text(
                "SELECT r.id, r.version_id, r.raw, h.txid, h.seq FROM resource r"
                " JOIN resource_history h ON h.resource_type = r.resource_type AND h.id = r.id"
                " AND h.version_id = r.version_id"
                " WHERE r.resource_type = :rtype AND r.deleted = :deleted AND r.raw IS NOT NULL"
            ),
            {"rtype": rtype, "deleted": False},
        ).all()
        for rid, version, raw, txid, seq in current:
            bind.execute(
                sa.delete(index).where(
                    index.c.resource_type == rtype,
                    index.c.resource_id == rid,
                    index.c.version_id == version,
                    index.c.param.in_(params),
                )
            )
            rows = [
                {
                    "resource_type": rtype,
                    "resource_id": rid,
                    "version_id": version,
                    "param": param,
                    "system": system,
                    "value": value,
                    "low": None,
                    "high": None,
                    "number": number,
                    "txid": txid,
                    "seq": seq,
                }
                for param, system, value, number in _rows(rtype, orjson.loads(raw))
            ]
            if rows:
                bind.execute(sa.insert(index), rows)


def downgrade() -> None:
    for rtype, params in NEW_PARAMS.items():
        names = ", ".join(f"'{p}'" for p in params)
        op.execute(
            f"DELETE FROM search_index WHERE resource_type = '{rtype}' AND param IN ({names})"
        )
