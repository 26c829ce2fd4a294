"""Location ``near`` (R4 special parameter): ``[latitude]|[longitude]|[distance]|[units]``.

A Location's ``position`` is indexed as two ``near`` rows, ``system`` ``latitude`` and
``longitude``, with the degrees in ``number``. A search keeps the Locations whose great-circle
(haversine) distance from the point is at most the distance given: the latitude band is an
index range, the exact test is arithmetic on the two rows (``sin``/``cos`` on both databases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, select

from service.errors import InvalidRequestError
from service.storage.repository import IndexEntry, index_t

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
# R4: "If the distance is omitted, then the server can use its own discretion as to what
# distances should be considered near".
DEFAULT_DISTANCE_KM = 50.0
# Units as UCUM codes (R4 says distance units are UCUM), plus the plain spellings clients send.
UNITS_KM: dict[str, float] = {
    "km": 1.0,
    "m": 0.001,
    "mi": 1.609344,
    "[mi_i]": 1.609344,
    "[mi_us]": 1.609347219,
}

_LAT = index_t.alias("near_lat")
_LON = index_t.alias("near_lon")


@dataclass(frozen=True)
class Near:
    latitude: float
    longitude: float
    km: float


def parse_near(value: str, name: str = "near") -> Near:
    """``lat|lon[|distance[|units]]``; 400 naming what is wrong."""
    parts = value.split("|")
    example = f"{name}=39.96|-83.00|10|km"
    if len(parts) < 2 or len(parts) > 4:
        raise _bad(f"'{name}={value}' must be latitude|longitude|distance|units ({example})", name)
    try:
        lat, lon = float(parts[0]), float(parts[1])
        distance = float(parts[2]) if len(parts) > 2 and parts[2] != "" else None
    except ValueError as exc:
        raise _bad(
            f"'{name}={value}': latitude, longitude and distance are decimal numbers ({example})",
            name,
        ) from exc
    if (
        not (-90 <= lat <= 90)
        or not (-180 <= lon <= 180)
        or not all(map(math.isfinite, (lat, lon)))
    ):
        raise _bad(
            f"'{name}={value}': latitude is -90 to 90 and longitude -180 to 180 (degrees)", name
        )
    unit = parts[3] if len(parts) > 3 and parts[3] != "" else "km"
    if unit not in UNITS_KM:
        raise _bad(f"'{name}={value}': units must be one of {', '.join(UNITS_KM)}", name)
    if distance is not None and (not math.isfinite(distance) or distance < 0):
        raise _bad(f"'{name}={value}': the distance must be zero or more", name)
    km = DEFAULT_DISTANCE_KM if distance is None else distance * UNITS_KM[unit]
    return Near(lat, lon, km)


def _bad(message: str, name: str) -> InvalidRequestError:
    return InvalidRequestError(message, expression=[name])


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def position_of(body: dict[str, Any]) -> tuple[float, float] | None:
    position = body.get("position")
    if not isinstance(position, dict):
        return None
    lat, lon = position.get("latitude"), position.get("longitude")
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        return float(lat), float(lon)
    return None


def position_entries(
    resource_type: str, resource_id: str, version_id: int, body: dict[str, Any]
) -> list[IndexEntry]:
    found = position_of(body)
    if found is None:
        return []
    return [
        IndexEntry(
            resource_type=resource_type,
            resource_id=resource_id,
            version_id=version_id,
            param="near",
            system=axis,
            value=repr(degrees),  # a value keeps the rows out of the date indexes
            number=degrees,
        )
        for axis, degrees in (("latitude", found[0]), ("longitude", found[1]))
    ]


def near_condition(
    resource_type: str, near: Near, *, id_col: Any, version_col: Any
) -> ColumnElement[bool]:
    """The version's position is within ``near.km`` of the point."""
    a, b = _LAT.c, _LON.c
    rad = math.pi / 180
    lat0, lon0 = near.latitude * rad, near.longitude * rad
    half_angle = near.km / EARTH_RADIUS_KM / 2
    conds: list[ColumnElement[bool]] = [
        a.resource_type == resource_type,
        a.param == "near",
        a.system == "latitude",
        a.resource_id == id_col,
        a.version_id == version_col,
    ]
    if half_angle < math.pi / 2:
        band = math.degrees(near.km / EARTH_RADIUS_KM)
        conds.append(a.number.between(near.latitude - band, near.latitude + band))
        # haversine(d) <= sin²(d / 2R), monotonic in d up to half the circumference.
        dlat = func.sin((a.number * rad - lat0) / 2)
        dlon = func.sin((b.number * rad - lon0) / 2)
        hav = dlat * dlat + math.cos(lat0) * func.cos(a.number * rad) * dlon * dlon
        conds.append(hav <= math.sin(half_angle) ** 2)
    return exists(
        select(1)
        .select_from(
            _LAT.join(
                _LON,
                and_(
                    b.resource_type == a.resource_type,
                    b.resource_id == a.resource_id,
                    b.version_id == a.version_id,
                    b.param == "near",
                    b.system == "longitude",
                ),
            )
        )
        .where(*conds)
    )
