"""SQL conditions over one resource version's search-index rows, for the engine's access,
consent and disclosure rules.

A rule says what must hold of a version ("has an index row ``status = active``"); this module
says how PostgreSQL must run it: as a probe of that version's handful of rows
(``ix_search_resource``), never as a walk over every row of a type and parameter (a plan it
picks for a type whose statistics lag behind its growth) nor as a hashed subquery over every
row it could match. The two devices are ``probe_type`` (a type comparison no index can use)
and ``probe_exists`` (an ``OFFSET 0`` fence on EXISTS).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, select

from service.search.query import probe_exists
from service.storage.repository import probe_type


def version_has(
    rows: Any,
    resource_type: str,
    resource_id: Any,
    version_id: Any,
    *conditions: ColumnElement[bool],
    join: tuple[Any, ColumnElement[bool]] | None = None,
    correlate_except: bool = False,
) -> ColumnElement[bool]:
    """EXISTS an index row ``rows`` (an alias of ``search_index``) of the ``resource_type``
    version ``resource_id``/``version_id`` meeting ``conditions``; ``join`` adds another table
    (alias, on-clause) to the probe; ``correlate_except`` correlates every other table, however
    far out (SQLAlchemy correlates one level by itself)."""
    query = select(1).select_from(rows)
    if join is not None:
        query = query.join(*join)
    query = query.where(
        probe_type(rows.c.resource_type, resource_type),
        rows.c.resource_id == resource_id,
        rows.c.version_id == version_id,
        *conditions,
    )
    if correlate_except:
        query = query.correlate_except(rows)
    return probe_exists(query)


def rows_exist(query: Select[Any]) -> ColumnElement[bool]:
    """EXISTS ``query``, run once per outer row as an index probe (for conditions on rows chosen
    otherwise, such as a Task linking the row to an organization)."""
    return probe_exists(query)
