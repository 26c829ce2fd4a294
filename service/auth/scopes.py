"""SMART scope grammar for backend (system) clients, and scope granting.

Grammar (SMART App Launch 2.2, "Scopes and launch context"):

    system/<Type|*>.<c?r?u?d?s?>[?param=value[,value...]&param=...]   SMART v2
    system/<Type|*>.read | .write | .*                                 SMART v1 -> rs | cud | cruds
    handoff/admin                                                      client administration

``patient/`` and ``user/`` scopes are well-formed SMART but never granted to a backend client;
``openid``, ``fhirUser``, ``launch...`` and anything unknown grant nothing. Lenient parsing (the
token endpoint) ignores them; strict parsing (client registration) rejects them.

Constraint semantics: within one constrained scope every parameter must match (AND); the
comma-separated values of one parameter are alternatives (OR); separate scopes for the same type
and action are alternatives (OR). Parameters are plain search parameter names: modifiers
(``owner:missing``) and chains (``owner.name``) are rejected, as SMART marks them experimental.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote

from service.auth.errors import InvalidScopeError
from service.errors import InsufficientScopeError

Action = Literal["c", "r", "u", "d", "s"]
ACTIONS: tuple[Action, ...] = ("c", "r", "u", "d", "s")
ADMIN_SCOPE = "handoff/admin"
# 42 CFR Part 2 medical-emergency exception: may read labelled data when stating a reason.
BREAK_GLASS_SCOPE = "handoff/break-glass"
MAX_SCOPE_LENGTH = 8192

# A constraint is a sorted tuple of (parameter, sorted alternative values); () means none.
Constraint = tuple[tuple[str, tuple[str, ...]], ...]

_V1_ACTIONS: dict[str, str] = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(
    r"(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})"
    r"\.(?P<permissions>[^?\s]+)(?:\?(?P<query>\S*))?"
)
_V2_PERMISSIONS = re.compile(r"c?r?u?d?s?")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
# SMART / OpenID scopes a client may send that are not errors, but grant nothing here.
_KNOWN_NON_GRANTING = frozenset(
    {"openid", "fhirUser", "profile", "offline_access", "online_access"}
)


class ScopeSyntaxError(ValueError):
    """A scope string is not acceptable (strict parsing only)."""


@dataclass(frozen=True)
class ScopeRule:
    """One granted ``system/`` scope, normalized to v2 form."""

    resource_type: str  # FHIR type name or "*"
    actions: frozenset[Action]
    constraint: Constraint = ()

    def covers_type(self, resource_type: str) -> bool:
        return self.resource_type in ("*", resource_type)

    def constraint_dict(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in self.constraint}

    def __str__(self) -> str:
        permissions = "".join(a for a in ACTIONS if a in self.actions)
        text = f"system/{self.resource_type}.{permissions}"
        if self.constraint:
            query = "&".join(
                f"{name}={','.join(quote(v, safe='/:|-._~') for v in values)}"
                for name, values in self.constraint
            )
            text += f"?{query}"
        return text


@dataclass(frozen=True)
class ScopeSet:
    """The scopes of a client or token; build with ``parse`` or ``of`` (which normalize)."""

    rules: frozenset[ScopeRule] = field(default_factory=frozenset)
    admin: bool = False
    break_glass: bool = False

    @classmethod
    def parse(cls, text: str | None, *, strict: bool = False) -> ScopeSet:
        """Parse a space-separated scope string.

        Lenient (default): scopes that grant nothing to a backend client are skipped.
        Strict: any such scope raises ScopeSyntaxError naming it.
        """
        text = text or ""
        if len(text) > MAX_SCOPE_LENGTH:
            raise ScopeSyntaxError(f"scope string longer than {MAX_SCOPE_LENGTH} characters")
        rules: list[ScopeRule] = []
        admin = False
        break_glass = False
        for token in text.split():
            if token == ADMIN_SCOPE:
                admin = True
                continue
            if token == BREAK_GLASS_SCOPE:
                break_glass = True
                continue
            try:
                rule = _parse_token(token)
            except ScopeSyntaxError:
                if strict:
                    raise
                continue
            if rule is not None:
                rules.append(rule)
            elif strict:
                raise ScopeSyntaxError(f"scope {token!r} is not granted to backend clients")
        return cls.of(rules, admin=admin, break_glass=break_glass)

    @classmethod
    def of(
        cls, rules: Iterable[ScopeRule], *, admin: bool = False, break_glass: bool = False
    ) -> ScopeSet:
        """Normalize: merge rules for the same type and constraint, drop rules covered by others."""
        merged: dict[tuple[str, Constraint], frozenset[Action]] = {}
        for rule in rules:
            key = (rule.resource_type, rule.constraint)
            merged[key] = merged.get(key, frozenset()) | rule.actions
        candidates = [ScopeRule(t, actions, c) for (t, c), actions in merged.items() if actions]
        kept = frozenset(
            rule
            for rule in candidates
            if not any(other != rule and _subsumes(other, rule) for other in candidates)
        )
        return cls(rules=kept, admin=admin, break_glass=break_glass)

    def __bool__(self) -> bool:
        return bool(self.rules) or self.admin

    def allows(self, resource_type: str, action: Action) -> bool:
        """Whether some scope permits ``action`` on ``resource_type``, possibly constrained."""
        return any(self._matching(resource_type, action))

    def constraints(self, resource_type: str, action: Action) -> list[dict[str, list[str]]]:
        """The OR-list of parameter constraints limiting ``action`` on ``resource_type``.

        ``[]`` means unconstrained. Raises InsufficientScopeError when nothing is allowed at
        all, so an empty list can never be mistaken for "no access".
        """
        matching = list(self._matching(resource_type, action))
        if not matching:
            raise InsufficientScopeError(
                f"scope does not permit '{action}' on {resource_type}",
                expression=(resource_type,),
            )
        if any(not rule.constraint for rule in matching):
            return []
        distinct = sorted({rule.constraint for rule in matching})
        return [{name: list(values) for name, values in c} for c in distinct]

    def matches_resource(
        self,
        resource_type: str,
        action: Action,
        index_values: Mapping[str, str | Iterable[str] | None],
    ) -> bool:
        """Whether a resource with these search-index values may undergo ``action``.

        ``index_values`` maps a search parameter name to the resource's value(s) for it, in the
        form the search index stores: references relative (``Organization/123``), tokens as
        ``code`` or ``system|code``. A constraint parameter the resource lacks does not match
        (fail closed). A constraint value without ``|`` matches a token of any system, as FHIR
        token search does. For writes, check the stored version (update, delete) and the
        incoming one (create, update): a constrained client must not move a resource out of,
        or into, its constraint.
        """
        if not self.allows(resource_type, action):
            return False
        alternatives = self.constraints(resource_type, action)
        if not alternatives:
            return True
        return any(
            all(_values_match(allowed, index_values.get(name)) for name, allowed in c.items())
            for c in alternatives
        )

    def to_string(self) -> str:
        """Space-separated v2 scopes in a stable order (``parse(to_string())`` round-trips)."""
        parts = [str(rule) for rule in sorted(self.rules, key=_sort_key)]
        if self.admin:
            parts.append(ADMIN_SCOPE)
        if self.break_glass:
            parts.append(BREAK_GLASS_SCOPE)
        return " ".join(parts)

    def _matching(self, resource_type: str, action: Action) -> Iterable[ScopeRule]:
        return (r for r in self.rules if r.covers_type(resource_type) and action in r.actions)


def grant(requested: str | None, allowed: ScopeSet) -> ScopeSet:
    """The scopes to grant for a token request, within the client's registered ``allowed``.

    An empty request grants everything registered. Otherwise each requested scope is
    intersected with each registered one (type, actions and constraints), so a request wider
    than the registration is narrowed rather than refused; scopes that grant nothing are
    skipped. Raises InvalidScopeError when nothing at all can be granted.
    """
    if not (requested or "").strip():
        result = allowed
    else:
        try:
            asked = ScopeSet.parse(requested)
        except ScopeSyntaxError as exc:
            raise InvalidScopeError(str(exc)) from exc
        rules = [
            rule
            for want in asked.rules
            for have in allowed.rules
            if (rule := _intersect(want, have)) is not None
        ]
        result = ScopeSet.of(
            rules,
            admin=asked.admin and allowed.admin,
            break_glass=asked.break_glass and allowed.break_glass,
        )
    if not result:
        raise InvalidScopeError("none of the requested scopes is granted to this client")
    return result


def _parse_token(token: str) -> ScopeRule | None:
    """One scope token -> rule; None if well-formed but not granting; raise if malformed."""
    match = _SCOPE.fullmatch(token)
    if match is None:
        if token in _KNOWN_NON_GRANTING or token == "launch" or token.startswith("launch/"):
            return None
        raise ScopeSyntaxError(f"scope {token!r} is not a SMART system scope")
    permissions = match["permissions"]
    query = match["query"]
    if permissions in _V1_ACTIONS:
        if query is not None:
            raise ScopeSyntaxError(f"scope {token!r}: v1 scopes cannot carry constraints")
        permissions = _V1_ACTIONS[permissions]
    elif not _V2_PERMISSIONS.fullmatch(permissions):
        raise ScopeSyntaxError(f"scope {token!r}: permissions must be a subset of 'cruds' in order")
    if match["context"] != "system":
        return None
    constraint = _parse_query(token, query) if query is not None else ()
    actions = frozenset(a for a in ACTIONS if a in permissions)
    return ScopeRule(match["type"], actions, constraint)


def _parse_query(token: str, query: str) -> Constraint:
    params: dict[str, tuple[str, ...]] = {}
    for part in query.split("&"):
        name, sep, raw = part.partition("=")
        if not sep or not _PARAM_NAME.fullmatch(name):
            raise ScopeSyntaxError(f"scope {token!r}: bad constraint {part!r}")
        if name in params:
            raise ScopeSyntaxError(f"scope {token!r}: parameter {name!r} repeated")
        values = [unquote(v) for v in raw.split(",")]
        if not all(values):
            raise ScopeSyntaxError(f"scope {token!r}: empty value for {name!r}")
        params[name] = tuple(sorted(set(values)))
    return tuple(sorted(params.items()))


def _intersect(want: ScopeRule, have: ScopeRule) -> ScopeRule | None:
    if want.resource_type == "*":
        resource_type = have.resource_type
    elif have.covers_type(want.resource_type):
        resource_type = want.resource_type
    else:
        return None
    actions = want.actions & have.actions
    constraint = _conjoin(want.constraint, have.constraint)
    if not actions or constraint is None:
        return None
    return ScopeRule(resource_type, actions, constraint)


def _conjoin(a: Constraint, b: Constraint) -> Constraint | None:
    """Both constraints at once; None when no value can satisfy both."""
    merged = dict(a)
    for name, values in b:
        if name in merged:
            both = tuple(sorted(set(merged[name]) & set(values)))
            if not both:
                return None
            merged[name] = both
        else:
            merged[name] = values
    return tuple(sorted(merged.items()))


def _subsumes(wide: ScopeRule, narrow: ScopeRule) -> bool:
    """Whether ``wide`` permits everything ``narrow`` does."""
    if not wide.covers_type(narrow.resource_type) or not narrow.actions <= wide.actions:
        return False
    narrow_params = dict(narrow.constraint)
    return all(
        name in narrow_params and set(narrow_params[name]) <= set(values)
        for name, values in wide.constraint
    )


def _values_match(allowed: list[str], actual: str | Iterable[str] | None) -> bool:
    if actual is None:
        return False
    values = [actual] if isinstance(actual, str) else list(actual)
    return any(
        value == want or ("|" not in want and value.endswith(f"|{want}"))
        for value in values
        for want in allowed
    )


def _sort_key(rule: ScopeRule) -> tuple[str, Constraint, str]:
    return (rule.resource_type, rule.constraint, "".join(sorted(rule.actions)))
