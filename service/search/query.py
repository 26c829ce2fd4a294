"""Parsing FHIR search parameters into a ``SearchRequest`` and building SQL conditions from it.

Semantics follow R4 search: parameters are ANDed, comma-separated values are ORed; token
``[system]|[code]``; reference ``Type/id``, ``id`` or an absolute URL on this server; string is
a case- and accent-insensitive prefix (``:exact``, ``:contains``); date prefixes
``eq ne gt lt ge le sa eb ap`` compare ranges at the precision given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Exists,
    FromClause,
    Select,
    and_,
    exists,
    false,
    not_,
    or_,
    select,
    true,
)

from service.errors import InvalidRequestError, Issue
from service.fhir import catalogue
from service.fhir.codes import SERVICE_SYSTEM
from service.fhir.dates import parse_range, shifted
from service.fhir.outcome import short_repr
from service.fhir.primitives import INTEGER_MAX, unsigned_int
from service.fhir.service_codes import above, below
from service.search.extract import (
    SYSTEM_WIDTH,
    VALUE_WIDTH,
    normalize_string,
    relative_reference,
)
from service.search.near import near_condition, parse_near
from service.search.params import BY_TYPE, SearchParam, can_target, params_for
from service.storage.repository import index_t, probe_type, resource_t

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
RESULT_PARAMS = {
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_total",
    "_summary",
    "_elements",
    "_format",
    "_page",
    "_cursor",
    "_pretty",
}
SORTABLE = {"_lastUpdated", "_id", "authored-on", "authored", "date", "birthdate", "modified"}
MODIFIERS = {
    "token": {"not", "missing", "text", "exact", "below", "above"},
    "reference": {"missing", "not"},
    "string": {"exact", "contains", "missing"},
    "uri": {"below", "missing", "exact"},
    "date": {"missing"},
    "number": {"missing"},
    "special": set(),
}
# Chained parameters (``location.address-city``): how many references one may follow.
MAX_CHAIN = 2
_PART_DISCLOSED = catalogue.names(part2="referral")


@dataclass(frozen=True)
class Criterion:
    param: SearchParam
    modifier: str | None
    values: tuple[str, ...]
    # Chained search: the reference parameters followed, each with the type it leads to;
    # ``param`` then belongs to the last type (``location.address-city``).
    chain: tuple[tuple[SearchParam, str], ...] = ()

    @property
    def name(self) -> str:
        hops = "".join(f"{p.name}{'' if len(p.targets) == 1 else ':' + t}." for p, t in self.chain)
        return hops + self.param.name + (f":{self.modifier}" if self.modifier else "")

    def describe(self) -> str:
        return f"{self.name}={','.join(self.values)}"

    def unchained(self) -> Criterion:
        """The criterion on the first hop's target (one hop fewer)."""
        return Criterion(self.param, self.modifier, self.values, self.chain[1:])


@dataclass(frozen=True)
class Include:
    source_type: str
    param: SearchParam
    target_type: str | None
    iterate: bool

    def describe(self) -> str:
        return f"{self.source_type}:{self.param.name}" + (
            f":{self.target_type}" if self.target_type else ""
        )


@dataclass(frozen=True)
class SearchLimits:
    """What one search may ask for (``HANDOFF_SEARCH_*``; the defaults are the settings').

    PostgreSQL plans a search with n criteria in time that grows much faster than n (each is a
    semi-join): 100 distinct criteria took ~1 s to plan, 20 take milliseconds."""

    max_params: int = 30  # distinct name=value pairs, result parameters included
    max_repeats: int = 5  # distinct criteria on one parameter
    max_values: int = 100  # comma-separated values of one parameter
    max_includes: int = 12  # _include and _revinclude, wildcards expanded
    max_included: int = 1000  # resources one page includes (the rest are left out, with a warning)


DEFAULT_LIMITS = SearchLimits()


@dataclass
class SearchRequest:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = 50
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    total: str = "none"
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    page: str | None = None
    cursor: str | None = None
    ignored: list[str] = field(default_factory=list)  # unknown/unsupported, lenient mode only
    max_included: int = DEFAULT_LIMITS.max_included

    def canonical_params(self) -> list[tuple[str, str]]:
        """The parameters actually applied (the ``self`` link echoes them)."""
        out: list[tuple[str, str]] = []
        for c in self.criteria:
            out.append((c.name, ",".join(c.values)))
        for inc in self.includes:
            out.append(("_include:iterate" if inc.iterate else "_include", inc.describe()))
        for inc in self.revincludes:
            out.append(("_revinclude:iterate" if inc.iterate else "_revinclude", inc.describe()))
        if self.sort:
            out.append(("_sort", ",".join(("-" if d else "") + n for n, d in self.sort)))
        if self.total != "none":
            out.append(("_total", self.total))
        if self.summary:
            out.append(("_summary", self.summary))
        if self.elements:
            out.append(("_elements", ",".join(self.elements)))
        out.append(("_count", str(self.count)))
        return out


def _bad(message: str, name: str) -> InvalidRequestError:
    return InvalidRequestError(message, expression=[name])


def parse_search(
    resource_type: str,
    params: list[tuple[str, str]],
    *,
    strict: bool,
    default_count: int,
    max_count: int,
    limits: SearchLimits = DEFAULT_LIMITS,
) -> SearchRequest:
    """Validate and parse search parameters; malformed values are 400 in both modes, and so is
    a search over ``limits``.

    A parameter repeated with the same value is one parameter (``status=requested`` sent 400
    times costs one criterion), as is a criterion whose values are another's in another order:
    the repeats are dropped before anything is parsed or any SQL built (the last occurrence
    stays, so a repeated result parameter keeps its last value)."""
    request = SearchRequest(
        resource_type=resource_type, count=default_count, max_included=limits.max_included
    )
    known = params_for(resource_type)
    problems: list[Issue] = []
    params = list(dict.fromkeys(reversed([(k, v) for k, v in params if v != ""])))[::-1]
    if len(params) > limits.max_params:
        raise _too_costly(
            f"This search has {len(params)} distinct parameters; the limit is "
            f"{limits.max_params} (HANDOFF_SEARCH_MAX_PARAMS). List alternatives of one "
            "parameter in one value (status=requested,accepted) or split the search",
            "request",
        )
    seen: set[tuple[str, str | None, frozenset[str]]] = set()
    repeats: dict[str, int] = {}

    def unsupported(text: str, name: str) -> None:
        if strict:
            problems.append(Issue("error", "not-supported", text, (name,)))
        else:
            request.ignored.append(text)

    for raw_name, raw_value in params:
        if raw_value == "":
            # R4 search 3.1.1.3: "Empty parameters are not an error - they are just ignored
            # by the server" (``family=`` from a blank form field). Criteria that guard a
            # write refuse them instead (resources.conditional_match).
            continue
        chain: tuple[tuple[SearchParam, str], ...] = ()
        last = raw_name
        if "." in raw_name and raw_name.split(":", 1)[0] not in RESULT_PARAMS:
            *hops, last = raw_name.split(".")
            try:
                chain = _parse_chain(resource_type, hops, raw_name)
            except InvalidRequestError as exc:
                problems.extend(exc.issues)
                continue
        name, _, modifier = last.partition(":")
        try:
            if name in RESULT_PARAMS and not chain:
                _parse_result_param(request, name, modifier, raw_value, max_count=max_count)
                continue
            target_type = chain[-1][1] if chain else resource_type
            param = params_for(target_type).get(name) if chain else known.get(name)
            if param is None:
                unsupported(f"Unknown search parameter '{raw_name}' for {resource_type}", name)
                continue
            mod: str | None = modifier or None
            if mod is not None and mod not in MODIFIERS.get(param.kind, set()):
                if param.kind == "reference" and mod in param.targets:
                    pass  # Type modifier on a reference: owner:Organization=123
                else:
                    unsupported(f"Modifier ':{mod}' is not supported on '{name}'", raw_name)
                    continue
            values = tuple(dict.fromkeys(_split_or(raw_value)))
            if not values:
                raise _bad(
                    f"Search parameter '{raw_name}' has no value between its commas", raw_name
                )
            if len(values) > limits.max_values:
                raise _too_costly(
                    f"Search parameter '{raw_name}' lists {len(values)} values; the limit is "
                    f"{limits.max_values} (HANDOFF_SEARCH_MAX_VALUES): split the search",
                    raw_name,
                )
            criterion = Criterion(param=param, modifier=mod, values=values, chain=chain)
            key = (criterion.name, mod, frozenset(values))
            if key in seen:
                continue  # the same criterion again, its values in another order
            seen.add(key)
            for value in values:
                _check_value(param, mod, value, raw_name)
            request.criteria.append(criterion)
            repeats[criterion.name] = repeats.get(criterion.name, 0) + 1
        except InvalidRequestError as exc:
            problems.extend(exc.issues)
    problems.extend(_over_limits(request, repeats, limits))
    if request.cursor is not None:
        _drop_what_a_feed_cannot_apply(request, unsupported)
    if problems:
        status_error = InvalidRequestError(problems[0].diagnostics, issues=problems)
        raise status_error
    return request


def _parse_chain(
    resource_type: str, hops: list[str], raw_name: str
) -> tuple[tuple[SearchParam, str], ...]:
    """The reference parameters of a chained name (``location.address-city``,
    ``subject:Patient.name``), each with the type it leads to."""
    if len(hops) > MAX_CHAIN:
        raise _bad(
            f"'{raw_name}' follows {len(hops)} references; at most {MAX_CHAIN} may be chained",
            raw_name,
        )
    chain: list[tuple[SearchParam, str]] = []
    current = resource_type
    for hop in hops:
        pname, _, target = hop.partition(":")
        param = params_for(current).get(pname)
        if param is None or param.kind != "reference":
            raise _bad(
                f"'{raw_name}': '{pname}' is not a reference parameter of {current}, so it "
                "cannot be chained",
                raw_name,
            )
        if not target:
            if len(param.targets) != 1:
                raise _bad(
                    f"'{raw_name}': {current}'s '{pname}' may refer to several types; name one "
                    f"({pname}:{(param.targets or ('Type',))[0]}.…)",
                    raw_name,
                )
            target = param.targets[0]
        elif (param.targets and target not in param.targets) or target not in BY_TYPE:
            raise _bad(f"'{raw_name}': {current}'s '{pname}' does not refer to {target}", raw_name)
        if target in _PART_DISCLOSED:
            # Their parts are shown to each party apart (42 CFR Part 2): a chain could test a
            # part the caller is shown withheld.
            raise _bad(
                f"'{raw_name}': chaining into {target} is not supported; search {target} "
                "itself and use its ids",
                raw_name,
            )
        chain.append((param, target))
        current = target
    return tuple(chain)


def _too_costly(message: str, name: str) -> InvalidRequestError:
    return InvalidRequestError(message, issues=[Issue("error", "too-costly", message, (name,))])


def _over_limits(
    request: SearchRequest, repeats: dict[str, int], limits: SearchLimits
) -> list[Issue]:
    """What the parsed search asks beyond ``limits``, as issues naming each limit's setting."""
    issues: list[Issue] = []
    for name, times in repeats.items():
        if times > limits.max_repeats:
            issues.extend(
                _too_costly(
                    f"Search parameter '{name}' is given {times} times with different values; "
                    f"the limit is {limits.max_repeats} (HANDOFF_SEARCH_MAX_REPEATS). A repeated "
                    "parameter must match every value: list alternatives in one value instead "
                    f"({name}=a,b)",
                    name,
                ).issues
            )
    request.includes = list(dict.fromkeys(request.includes))
    request.revincludes = list(dict.fromkeys(request.revincludes))
    includes = len(request.includes) + len(request.revincludes)
    if includes > limits.max_includes:
        issues.extend(
            _too_costly(
                f"This search asks for {includes} _include and _revinclude paths (wildcards "
                f"count each parameter they stand for); the limit is {limits.max_includes} "
                "(HANDOFF_SEARCH_MAX_INCLUDES): name the paths you need",
                "_include",
            ).issues
        )
    return issues


def _drop_what_a_feed_cannot_apply(
    request: SearchRequest, unsupported: Callable[[str, str], None]
) -> None:
    """A ``_cursor`` page lists changes in commit order, not a ranked or counted match set:
    sorting, totals, counts and ``_page`` tokens do not apply to it. Reported like any other
    unsupported parameter (400 under ``handling=strict``), never silently dropped."""
    why = "does not apply with _cursor (a feed page lists changes in commit order)"
    for crit in [c for c in request.criteria if c.chain]:
        unsupported(f"The chained parameter '{crit.name}' {why}", crit.name)
        request.criteria.remove(crit)
    if request.sort:
        unsupported(f"_sort {why}", "_sort")
        request.sort = []
    if request.total != "none":
        unsupported(f"_total {why}", "_total")
        request.total = "none"
    if request.summary == "count":
        unsupported(f"_summary=count {why}", "_summary")
        request.summary = None
    if request.page is not None:
        unsupported(f"_page {why}; follow the feed's next and cursor links", "_page")
        request.page = None


def _split_or(value: str) -> list[str]:
    """Split on commas that are not escaped with a backslash."""
    parts: list[str] = []
    current = ""
    escaped = False
    for ch in value:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p != ""]


def _check_value(param: SearchParam, modifier: str | None, value: str, name: str) -> None:
    if modifier == "missing":
        if value not in ("true", "false"):
            raise _bad(f"'{name}' takes true or false, not '{value}'", name)
        return
    if param.kind == "date":
        _, text = split_prefix(value)
        if parse_range(text) is None:
            raise _bad(
                f"'{name}={value}' is not a FHIR date: use a prefix (eq, ne, gt, lt, ge, le, sa, "
                "eb, ap) and a value like 2025-06-01 or 2025-06-01T10:15:00Z",
                name,
            )
    elif param.kind == "reference":
        if value.startswith(("http://", "https://", "urn:")):
            return
        parts = value.split("/")
        if len(parts) == 1 and parts[0] and " " not in value:
            return
        if len(parts) in (2, 4) and parts[0][:1].isupper() and parts[1] and " " not in value:
            return
        raise _bad(
            f"'{name}={value}' is not a reference: use Type/id, an id, or an absolute URL", name
        )
    elif param.kind == "special":
        parse_near(value, name)
    elif param.kind == "token" and param.name == "_id" and len(value) > 64:
        raise _bad(f"'{name}' value is longer than a FHIR id may be", name)


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in DATE_PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _parse_result_param(
    request: SearchRequest, name: str, modifier: str, value: str, *, max_count: int
) -> None:
    if name == "_count":
        count = unsigned_int(value)
        if count is None:
            shown = short_repr(value)
            raise _bad(f"_count must be an integer from 0 to {INTEGER_MAX}, not {shown}", name)
        request.count = min(count, max_count)
    elif name == "_sort":
        request.sort = []
        for key in _split_or(value):
            desc = key.startswith("-")
            key = key.lstrip("-")
            if key not in SORTABLE or key not in params_for(request.resource_type):
                raise _bad(
                    f"Cannot sort {request.resource_type} by '{key}'; sortable: "
                    + ", ".join(
                        sorted(k for k in SORTABLE if k in params_for(request.resource_type))
                    ),
                    name,
                )
            request.sort.append((key, desc))
    elif name in ("_include", "_revinclude"):
        if value == "*" and name == "_include":
            value = f"{request.resource_type}:*"  # every reference of the matches
        includes = _parse_include(value, iterate=modifier == "iterate", name=name)
        if name == "_include":
            if includes[0].source_type != request.resource_type and modifier != "iterate":
                raise _bad(
                    f"_include={value} names {includes[0].source_type}, not "
                    f"{request.resource_type} (use _include:iterate for included resources)",
                    name,
                )
            request.includes.extend(includes)
        else:
            if modifier != "iterate":
                # Only the parameters that can point at the matches can find anything (one
                # named alone is kept, finding nothing, as before the wildcard).
                includes = [
                    i for i in includes if can_target(i.param, request.resource_type)
                ] or includes[:1]
            request.revincludes.extend(includes)
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise _bad("_total must be none, estimate or accurate", name)
        request.total = "none" if value == "none" else "accurate"
    elif name == "_summary":
        request.summary = parse_summary(value, search=True)
    elif name == "_elements":
        request.elements = parse_elements(value)
    elif name == "_page":
        request.page = value
    elif name == "_cursor":
        request.cursor = value


def parse_summary(value: str, *, search: bool) -> str | None:
    """``_summary``, on a search or a read (``count`` is a search's); None for ``false``."""
    allowed = (("count",) if search else ()) + ("true", "text", "data", "false")
    if value not in allowed:
        raise _bad(f"_summary must be {', '.join(allowed[:-1])} or {allowed[-1]}", "_summary")
    return None if value == "false" else value


def parse_elements(value: str) -> list[str]:
    """``_elements``: the top-level element names, comma-separated."""
    return [e.strip() for e in value.split(",") if e.strip()]


def _parse_include(value: str, *, iterate: bool, name: str) -> list[Include]:
    """``SourceType:param[:TargetType]``; ``SourceType:*`` is every reference parameter of the
    source type (the R4 wildcard)."""
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise _bad(
            f"{name}={value}: expected SourceType:param[:TargetType] (or SourceType:*)", name
        )
    source, pname = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in BY_TYPE:
        raise _bad(f"{name}={value}: {source} is not a resource type this server holds", name)
    references = {n: p for n, p in params_for(source).items() if p.kind == "reference"}
    if pname == "*":
        chosen = [references[n] for n in sorted(references)]
    elif pname in references:
        chosen = [references[pname]]
    else:
        raise _bad(f"{name}={value}: '{pname}' is not a reference parameter of {source}", name)
    return [
        Include(source_type=source, param=param, target_type=target, iterate=iterate)
        for param in chosen
    ]


# --- SQL -------------------------------------------------------------------------------------


def _date_condition(
    prefix: str, low_col: ColumnElement[Any], high_col: ColumnElement[Any], value: str
) -> ColumnElement[bool]:
    """The stored range [low, high] against the searched one. Open Period ends are stored as
    ``OPEN_START``/``OPEN_END`` (service.fhir.dates), so each prefix is one comparison that
    ``ix_search_low`` or ``ix_search_high`` can answer."""
    rng = parse_range(value)
    assert rng is not None  # checked by parse_search
    s_low, s_high = rng
    if prefix == "eq":
        return and_(low_col >= s_low, high_col <= s_high)
    if prefix == "ne":
        return or_(low_col < s_low, high_col > s_high)
    if prefix == "gt":
        return high_col > s_high
    if prefix == "lt":
        return low_col < s_low
    if prefix == "ge":
        return high_col >= s_low
    if prefix == "le":
        return low_col <= s_high
    if prefix == "sa":
        return low_col > s_high
    if prefix == "eb":
        return high_col < s_low
    # ap: within 10% of the distance to now, at least a day (R4 leaves "approximately" open)
    from datetime import UTC

    margin = max(abs(datetime.now(UTC) - s_low) / 10, timedelta(days=1))
    return and_(low_col <= shifted(s_high, margin), high_col >= shifted(s_low, -margin))


def value_condition(
    crit: Criterion, value: str, base_url: str | None, *, table: FromClause = index_t
) -> ColumnElement[bool] | None:
    """Condition on ``search_index`` columns for one value (None: matches nothing)."""
    p = crit.param
    c = table.c
    # Values are compared at the width they are indexed at (search.extract).
    if p.kind == "token" and crit.modifier in ("below", "above"):
        system, _, code = value.rpartition("|") if "|" in value else (None, "", value)
        related = (below if crit.modifier == "below" else above)(system or None, code)
        if related is None:  # not a hierarchy this server holds: the code itself
            return value_condition(Criterion(p, None, (value,)), value, base_url, table=table)
        return and_(c.system == SERVICE_SYSTEM, c.value.in_(sorted(related)))
    if p.kind == "token":
        if "|" in value:
            system, code = value.split("|", 1)
            conds: list[ColumnElement[bool]] = []
            conds.append(c.system.is_(None) if system == "" else c.system == system[:SYSTEM_WIDTH])
            if code:
                conds.append(c.value == code[:VALUE_WIDTH])
            return and_(*conds)
        return c.value == value[:VALUE_WIDTH]
    if p.kind == "reference":
        if value.startswith(("http://", "https://")):
            ref = relative_reference(value, base_url)
            return c.value == ref[:VALUE_WIDTH]
        if crit.modifier and crit.modifier in p.targets:
            return c.value == f"{crit.modifier}/{value}"[:VALUE_WIDTH]
        if "/" in value:
            return c.value == relative_reference(value, base_url)[:VALUE_WIDTH]
        targets = p.targets or ()
        candidates = [f"{t}/{value}"[:VALUE_WIDTH] for t in targets] + [value[:VALUE_WIDTH]]
        return c.value.in_(candidates)
    if p.kind == "string":
        if crit.modifier == "exact":
            return c.system == value[:SYSTEM_WIDTH]
        norm = _escape_like(normalize_string(value)[:VALUE_WIDTH])
        if crit.modifier == "contains":
            return c.value.like(f"%{norm}%", escape="\\")
        return c.value.like(f"{norm}%", escape="\\")
    if p.kind == "uri":
        if crit.modifier == "below":
            return c.value.like(_escape_like(value[:VALUE_WIDTH]) + "%", escape="\\")
        return c.value == value[:VALUE_WIDTH]
    if p.kind == "date":
        prefix, text = split_prefix(value)
        # Date rows have no ``value``: saying so lets the planner use ``ix_search_low`` and
        # ``ix_search_high``, which hold only such rows (see storage.tables).
        return and_(
            c.value.is_(None),
            _date_condition(prefix, c.low, c.high, text),
        )
    return None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def probe_exists(query: Select[Any]) -> Exists:
    """EXISTS kept a per-row index probe (``OFFSET 0``; see ``index_exists``). For conditions
    on rows already chosen otherwise, such as tenancy and consent checks: without the fence,
    PostgreSQL may run the subquery once for every row it could match and hash the result,
    e.g. every resource an organization ever created, on each read of one of them."""
    return exists(query.offset(0))


def param_rows(cols: Any, param: SearchParam) -> list[ColumnElement[bool]]:
    """Conditions on ``search_index`` columns ``cols`` for the rows holding ``param``'s values
    (its own, or those it is ``stored_as``)."""
    conds: list[ColumnElement[bool]] = [cols.param == param.index_name]
    if param.index_target is not None:
        conds.append(references_type(cols.value, param.index_target))
    return conds


def references_type(value_col: Any, target: str) -> ColumnElement[bool]:
    """A reference row's value (``Type/id``) points at ``target``. The value says it: reference
    rows keep no ``system``, which keeps them out of ``ix_search_system_value``."""
    condition: ColumnElement[bool] = value_col.like(f"{target}/%")
    return condition


def index_exists(
    resource_type: str,
    param: SearchParam,
    value_condition: ColumnElement[bool] | None,
    *,
    id_col: Any,
    version_col: Any,
    probe: bool = False,
) -> ColumnElement[bool]:
    """Whether the row's version has an index row of ``param`` (``param_rows``) matching the
    value.

    ``probe``: keep it a per-row index probe. PostgreSQL may otherwise evaluate an EXISTS under
    OR by hashing *every* index row with that value (all 333k ``status=requested`` rows of a
    1M-Task server) once per query, and in a cached generic plan it does, since it cannot see
    the value. ``OFFSET 0`` is the planner's documented fence against that rewrite. Use it only
    where the rows are already chosen by an index walk (the change feed), not in searches,
    which need the planner free to drive from the criterion instead.
    """
    c = index_t.c
    conds = [
        # A probe goes by the version's own rows; a search may drive from the value's rows.
        probe_type(c.resource_type, resource_type) if probe else c.resource_type == resource_type,
        *param_rows(c, param),
        c.resource_id == id_col,
        c.version_id == version_col,
    ]
    if value_condition is not None:
        conds.append(value_condition)
    subquery = select(1).select_from(index_t).where(*conds)
    return probe_exists(subquery) if probe else exists(subquery)


def criterion_condition(
    crit: Criterion,
    resource_type: str,
    *,
    id_col: Any,
    version_col: Any,
    last_updated_col: Any,
    base_url: str | None,
    probe: bool = False,
) -> ColumnElement[bool]:
    """The SQL condition for one criterion. Built once per distinct criterion: building costs
    more than running a poll (~0.2 ms of SQLAlchemy per criterion), and providers repeat the
    same owner/status poll all day. SQL expressions are immutable, so sharing them is safe;
    ``ap`` dates depend on the current time and are always built afresh."""
    now_dependent = crit.param.kind == "date" and any(v.startswith("ap") for v in crit.values)
    build = _criterion_condition if now_dependent else _cached_criterion_condition
    return build(crit, resource_type, id_col, version_col, last_updated_col, base_url, probe)


def _criterion_condition(
    crit: Criterion,
    resource_type: str,
    id_col: Any,
    version_col: Any,
    last_updated_col: Any,
    base_url: str | None,
    probe: bool,
) -> ColumnElement[bool]:
    p = crit.param
    if p.name == "_id":
        cond: ColumnElement[bool] = id_col.in_(list(crit.values))
        return not_(cond) if crit.modifier == "not" else cond
    if p.name == "_lastUpdated":
        ors = []
        for value in crit.values:
            prefix, text = split_prefix(value)
            ors.append(_date_condition(prefix, last_updated_col, last_updated_col, text))
        return or_(*ors)
    if p.kind == "special":
        nears = [parse_near(v, p.name) for v in crit.values]
        return or_(
            *(
                near_condition(resource_type, n, id_col=id_col, version_col=version_col)
                for n in nears
            )
        )
    if crit.modifier == "missing":
        any_row = index_exists(
            resource_type, p, None, id_col=id_col, version_col=version_col, probe=probe
        )
        return not_(any_row) if crit.values[0] == "true" else any_row
    value_conds = [
        vc for vc in (value_condition(crit, v, base_url) for v in crit.values) if vc is not None
    ]
    matched = (
        index_exists(
            resource_type,
            p,
            or_(*value_conds),
            id_col=id_col,
            version_col=version_col,
            probe=probe,
        )
        if value_conds
        else false()
    )
    if crit.modifier == "not":
        return not_(matched)
    return matched


# Bounded by count: an entry is ~8 KB, and criteria naming one record (an assessment's lookup of
# what it derived) occur once each; 1,024 keeps every recurring poll with room to spare, at
# most ~8 MB per process (4,096 grew a worker's memory by ~30 MB before levelling off).
_cached_criterion_condition = functools.lru_cache(maxsize=1024)(_criterion_condition)


def criteria_condition(
    request: SearchRequest,
    *,
    id_col: Any,
    version_col: Any,
    last_updated_col: Any,
    base_url: str | None,
    probe: bool = False,
    chained: Callable[[Criterion], ColumnElement[bool]] | None = None,
) -> ColumnElement[bool]:
    """Every criterion of ``request``; ``chained`` builds those that follow references (the
    caller's access rules apply to what they follow, so only it can)."""
    conds = []
    for c in request.criteria:
        if c.chain:
            if chained is None:
                message = f"The chained parameter '{c.name}' is not supported here"
                raise InvalidRequestError(
                    message, issues=[Issue("error", "not-supported", message, (c.name,))]
                )
            conds.append(chained(c))
            continue
        conds.append(
            criterion_condition(
                c,
                request.resource_type,
                id_col=id_col,
                version_col=version_col,
                last_updated_col=last_updated_col,
                base_url=base_url,
                probe=probe,
            )
        )
    return and_(true(), *conds)


def sort_expression(resource_type: str, key: str) -> Any:
    """SQL expression for a sort key on the ``resource`` table."""
    r = resource_t.c
    if key == "_lastUpdated":
        return r.last_updated
    if key == "_id":
        return r.id
    c = index_t.c
    return (
        select(c.low)
        .where(
            probe_type(c.resource_type, resource_type),
            c.param == key,
            c.resource_id == r.id,
            c.version_id == r.version_id,
        )
        .order_by(c.low)
        .limit(1)
        .scalar_subquery()
    )
