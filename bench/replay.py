"""The statements the service sends for one request, as a template replayed per request.

``bench.capture`` records what the service sends to PostgreSQL for one request (one
``Captured``); ``build_template`` turns two captures of the same request into a ``Template``
whose parameters are constants or are built, per replayed request, from:

* **request tokens**: values the request carries (a read's Task id; a poll's owner, cursor and
  cursor position; a JMS referral's number). They are substituted wherever they occur: as a
  whole parameter, inside text (an AuditEvent's JSON names the Task it read; index rows hold
  ``Task/<id>``), and inside base64 text that is a whole JSON string (a search's AuditEvent
  records its query in base64). Integers are substituted only where a parameter is exactly
  the integer.
* **generated ids**: the ids the service made for the request (UUIDv7 resource ids, the
  32-hex-digit request id), found as the ids that differ between two captures of the same
  request. Each replay makes fresh ones, UUIDv7 time-ordered like the service's, so new rows
  land at the end of the primary-key indexes as the service's do.
* **instants**: every timestamp within the capture's own time window (a ``timestamptz``
  parameter or ISO 8601 text inside JSON), replayed as the same offset from the replay's own
  now, in the same text format.

Everything else is replayed as captured: a created Task's content, the patient an AuditEvent
names, the Tasks a full page's AuditEvent lists. ``kept_values`` measures how much that is,
against a capture of a different request.

The template is checked before use: the second capture rendered from the first (with the
second's tokens, ids and instants) must be exactly what the service sent the second time; a
parameter that changes for a reason the template does not know stops the run.

``Replay`` runs a template's statements on an asyncpg pool as the service ran them: on as many
connection checkouts, in the same order, each statement in autocommit or in its transaction,
committed (or rolled back) after the statement the service committed after. Nothing here imports
the service: the same-work ceiling (``bench.ceiling_app``) is bare FastAPI + asyncpg.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
HEX_RE = r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])"
ID_RE = re.compile(f"{UUID_RE}|{HEX_RE}")
INSTANT_RE = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})"
_INSTANT_FORM = re.compile(r".{19}(?:\.(\d{1,6}))?(Z|[+-]\d{2}:\d{2})$")  # fraction, zone
B64_RE = r'(?<=")[A-Za-z0-9+/]{16,}={0,2}(?=")'
SLACK = timedelta(seconds=1)  # around a capture's window: its instants are the request's


class CaptureError(RuntimeError):
    """The captures cannot make a faithful template (say why)."""


# --- what was captured ------------------------------------------------------------------------


@dataclass
class Sent:
    """One statement as the service sent it: positional parameters after bind processing (a
    list of parameter lists for an executemany), on the request's ``checkout``-th connection
    checkout, in autocommit (``transaction`` None) or in the request's ``transaction``-th
    transaction."""

    sql: str
    params: list[Any]
    checkout: int
    transaction: int | None
    many: bool = False
    grouped: bool = False  # sent by the service's group commit (see GroupCommit)


@dataclass
class Captured:
    """One request as the service served it."""

    statements: list[Sent]
    ends: dict[int, str]  # transaction -> "commit" | "rollback"
    tokens: dict[str, Any]  # the request's own values (see the module)
    started: datetime
    ended: datetime
    status: int
    response: bytes

    def shape(self) -> list[tuple[str, int, int | None, bool, bool]]:
        return [(s.sql, s.checkout, s.transaction, s.many, s.grouped) for s in self.statements]


# --- templates --------------------------------------------------------------------------------
#
# A parameter's template is a JSON-able node:
#   ["c", value]            a constant (str, int, float, bool, None)
#   ["d", iso]              a constant timestamptz
#   ["t", offset_us]        an instant: the replay's now + offset
#   ["k", name]             a token (request token or generated id), the whole value
#   ["s", parts]            text: each part a str, ["k", name], ["t", offset_us, digits, zone]
#                           or ["b", parts] (base64 of the text of ``parts``)
#   ["l", nodes]            an array


@dataclass
class Step:
    sql: str
    params: list[Any]  # nodes (a list of node lists for an executemany)
    checkout: int
    transaction: int | None
    many: bool = False
    grouped: bool = False


@dataclass
class Template:
    name: str
    tokens: list[str]  # request tokens a replay must be given
    generated: list[tuple[str, str]]  # (name, "uuid" | "hex") made afresh per replay
    steps: list[Step]
    ends: dict[int, str]
    status: int
    response: Any  # a node rendering the service's answer (writes), or None
    page: int | None = None  # entries of a search's page (picks a poll's variant)
    notes: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # generated id -> captured value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tokens": self.tokens,
            "generated": [list(g) for g in self.generated],
            "steps": [s.__dict__ for s in self.steps],
            "ends": {str(k): v for k, v in self.ends.items()},
            "status": self.status,
            "response": self.response,
            "page": self.page,
            "notes": self.notes,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Template:
        return cls(
            name=d["name"],
            tokens=list(d["tokens"]),
            generated=[(g[0], g[1]) for g in d["generated"]],
            steps=[Step(**s) for s in d["steps"]],
            ends={int(k): v for k, v in d["ends"].items()},
            status=int(d["status"]),
            response=d["response"],
            page=d.get("page"),
            notes=list(d.get("notes", [])),
            origin=dict(d.get("origin", {})),
        )


class _Templatizer:
    """Turns captured values into nodes, given the tokens' captured values and the window."""

    def __init__(
        self,
        tokens: Mapping[str, Any],
        started: datetime,
        ended: datetime,
        int_places: set[tuple[int, ...]] | None = None,
    ) -> None:
        self.int_places = int_places  # where integer tokens are (None: wherever they occur)
        self.ref = _floor_ms(started)
        self.lo, self.hi = started - SLACK, ended + SLACK
        self.ints = {
            v: k for k, v in tokens.items() if isinstance(v, int) and not isinstance(v, bool)
        }
        self.strs = {v: k for k, v in tokens.items() if isinstance(v, str)}
        for value in self.strs:
            if len(value) < 4:
                raise CaptureError(f"token {value!r} is too short to be found in text")
        alternatives = [re.escape(v) for v in sorted(self.strs, key=len, reverse=True)]
        pattern = "|".join(
            [*(f"(?P<k{i}>{a})" for i, a in enumerate(alternatives)), "(?P<t>" + INSTANT_RE + ")"]
        )
        self.names = [self.strs[v] for v in sorted(self.strs, key=len, reverse=True)]
        self.scan = re.compile(f"{pattern}|(?P<b>{B64_RE})")

    def in_window(self, dt: datetime) -> bool:
        return dt.tzinfo is not None and self.lo <= dt <= self.hi

    def node(self, value: Any, path: tuple[int, ...] = ()) -> Any:
        if isinstance(value, list | tuple):
            return ["l", [self.node(v, (*path, i)) for i, v in enumerate(value)]]
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return ["c", value]
        if isinstance(value, int):
            name = self.ints.get(value)
            if name is not None and (self.int_places is None or path in self.int_places):
                return ["k", name]
            return ["c", value]
        if isinstance(value, datetime):
            if self.in_window(value):
                return ["t", _micros(value - self.ref)]
            return ["d", value.isoformat()]
        if isinstance(value, str):
            name = self.strs.get(value)
            if name is not None:
                return ["k", name]
            parts = self.parts(value)
            if all(isinstance(p, str) for p in parts):
                return ["c", value]
            return ["s", parts]
        raise CaptureError(f"cannot replay a parameter of type {type(value).__name__}: {value!r}")

    def parts(self, text: str) -> list[Any]:
        parts: list[Any] = []
        at = 0
        for m in self.scan.finditer(text):
            kind = m.lastgroup or ""
            found = m.group()
            part: Any = found
            if kind.startswith("k"):
                part = ["k", self.names[int(kind[1:])]]
            elif kind == "t":
                dt = datetime.fromisoformat(found.replace("Z", "+00:00"))
                if self.in_window(dt):
                    form = _INSTANT_FORM.match(found)
                    assert form is not None
                    fraction, zone = form.group(1) or "", form.group(2)
                    part = ["t", _micros(dt - self.ref), len(fraction), zone]
            elif kind == "b":
                inner = _b64_text(found)
                if inner is not None:
                    inner_parts = self.parts(inner)
                    if not all(isinstance(p, str) for p in inner_parts):
                        part = ["b", inner_parts]
            if isinstance(part, str):
                continue  # stays in the literal text around it
            if m.start() > at:
                parts.append(text[at : m.start()])
            parts.append(part)
            at = m.end()
        if at < len(text):
            parts.append(text[at:])
        return parts


def _b64_text(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _floor_ms(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _leaves(value: Any, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Any]]:
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path, value


def _params(c: Captured) -> list[Any]:
    return [s.params for s in c.statements]


def _generated(a: Captured, b: Captured) -> dict[str, str]:
    """The ids of ``a`` that are other ids at the same place in ``b`` (of the same request):
    the ones the service made for each. Request tokens are not among them."""
    tokens = {v for v in a.tokens.values() if isinstance(v, str)}
    found: dict[str, str] = {}
    for (_, x), (_, y) in zip(_leaves(_params(a)), _leaves(_params(b)), strict=True):
        if not isinstance(x, str) or not isinstance(y, str) or x == y:
            continue
        xs, ys = ID_RE.findall(x), ID_RE.findall(y)
        if len(xs) != len(ys):
            continue  # verification below names it if it matters
        for u, v in zip(xs, ys, strict=True):
            if u == v or u in tokens:
                continue
            if found.setdefault(u, v) != v:
                raise CaptureError(f"id {u} of the first capture is both {found[u]} and {v}")
    return found


def _same_shape(a: Captured, b: Captured, what: str) -> None:
    if a.shape() != b.shape():
        sa = [s[0].split("\n", 1)[0][:60] for s in a.shape()]
        sb = [s[0].split("\n", 1)[0][:60] for s in b.shape()]
        raise CaptureError(f"{what}: the service sent different statements:\n{sa}\n{sb}")
    if a.ends != b.ends:
        raise CaptureError(f"{what}: transactions ended differently: {a.ends} {b.ends}")
    for i, (x, y) in enumerate(zip(_params(a), _params(b), strict=True)):
        if [p for p, _ in _leaves(x)] != [p for p, _ in _leaves(y)]:
            raise CaptureError(f"{what}: statement {i} has parameters of another shape")


def _int_places(a: Captured, other: Captured | None) -> set[tuple[int, ...]] | None:
    """Where ``a``'s integer request tokens are: the places holding the token's value in
    ``a`` and the other request's value of that token in ``other`` (a small integer such as a
    cursor position may also be a constant elsewhere). None: wherever the value occurs."""
    ints = {k: v for k, v in a.tokens.items() if isinstance(v, int) and not isinstance(v, bool)}
    if not ints or other is None:
        return None
    places: set[tuple[int, ...]] = set()
    for i, x in enumerate(a.statements):
        y = other.statements[i].params if i < len(other.statements) else None
        same = (
            y is not None
            and x.sql == other.statements[i].sql
            and [p for p, _ in _leaves(x.params)] == [p for p, _ in _leaves(y)]
        )
        for path, value in _leaves(x.params):
            for key, token in ints.items():
                if isinstance(value, bool) or value != token:
                    continue
                if not same or _nth(y, path) == other.tokens.get(key):
                    places.add((i, *path))
    return places


def _nth(value: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        value = value[i]
    return value


def build_template(
    name: str,
    a: Captured,
    b: Captured,
    *,
    other: Captured | None = None,
    page: int | None = None,
) -> Template:
    """The template of ``a``, checked against ``b``: the same request sent again (with other
    request tokens where the request must differ, e.g. a new referral number). ``other``, a
    different request of the same kind, tells where integer request tokens are."""
    if a.status != b.status:
        raise CaptureError(f"{name}: the service answered {a.status}, then {b.status}")
    _same_shape(a, b, name)
    generated = _generated(a, b)
    gen_names = {v: f"g{i}" for i, v in enumerate(generated)}
    origin = {k: v for v, k in gen_names.items()}  # generated id -> its captured value
    tz = _Templatizer({**a.tokens, **origin}, a.started, a.ended, _int_places(a, other))
    steps = [
        Step(
            sql=s.sql,
            params=(
                [tz.node(row, (i, r)) for r, row in enumerate(s.params)]
                if s.many
                else tz.node(s.params, (i,))[1]
            ),
            checkout=s.checkout,
            transaction=s.transaction,
            many=s.many,
            grouped=s.grouped,
        )
        for i, s in enumerate(a.statements)
    ]
    for i, s in enumerate(a.statements):
        alone = sum(1 for t in a.statements if t.checkout == s.checkout) == 1
        arrays = all(isinstance(p, list) for p in s.params)
        if s.grouped and (s.transaction is not None or s.many or not alone or not arrays):
            raise CaptureError(
                f"{name}: statement {i} came from the group commit but is not one statement "
                "of array parameters alone in autocommit: its replays cannot be merged"
            )
    response = tz.node(a.response.decode()) if a.response else None
    template = Template(
        name=name,
        tokens=sorted(a.tokens),
        generated=[(k, "uuid" if "-" in v else "hex") for v, k in gen_names.items()],
        steps=steps,
        ends=dict(a.ends),
        status=a.status,
        response=response,
        page=page,
        origin=origin,
    )
    # The check: rendered with b's values, the template is what the service sent for b.
    ids = {gen_names[u]: v for u, v in generated.items()}
    rendered = render_params(template, {**b.tokens, **ids}, base=_floor_ms(b.started))
    want = _masked(_params(b), b)
    got = _masked(rendered, b)
    for i, (x, y) in enumerate(zip(got, want, strict=True)):
        if x != y:
            where = _first_difference(x, y)
            raise CaptureError(
                f"{name}: statement {i} ({a.statements[i].sql[:60]!r}) varies in a way the "
                f"template does not reproduce: {where}"
            )
    counts = _counts(template)
    grouped = sum(1 for st in steps if st.grouped)
    template.notes.append(
        f"{len(steps)} statements ({counts['auto']} in autocommit"
        + (f", {grouped} of them through the group commit" if grouped else "")
        + f"; {counts['in_tx']} in {len(template.ends)} transaction(s)) on "
        f"{counts['checkouts']} connection checkout(s); "
        f"per request: {len(template.generated)} new ids, {counts['instants']} instants, "
        f"request tokens {', '.join(template.tokens) or 'none'} ({counts['tokens']} places)"
    )
    return template


def _counts(t: Template) -> dict[str, int]:
    nodes = [
        p for s in t.steps for p in (s.params if not s.many else [n for r in s.params for n in r])
    ]
    instants = tokens = 0

    def walk(n: Any) -> None:
        nonlocal instants, tokens
        tag = n[0] if isinstance(n, list) and n and isinstance(n[0], str) else None
        if tag == "t":
            instants += 1
        elif tag == "k":
            tokens += 1 if n[1] in t.tokens else 0
        elif tag in ("l", "s", "b"):
            for x in n[1]:
                walk(x)

    for n in nodes:
        walk(n)
    return {
        "auto": sum(1 for s in t.steps if s.transaction is None),
        "in_tx": sum(1 for s in t.steps if s.transaction is not None),
        "checkouts": len({s.checkout for s in t.steps}),
        "instants": instants,
        "tokens": tokens,
    }


_INSTANT = re.compile(INSTANT_RE)


def _masked(value: Any, c: Captured) -> Any:
    """``value`` with every instant of ``c``'s window replaced by a marker (the time a
    replay takes is its own)."""
    lo, hi = c.started - SLACK, c.ended + SLACK

    def in_window(dt: datetime) -> bool:
        return dt.tzinfo is not None and lo <= dt <= hi

    def text(s: str) -> str:
        def sub(m: re.Match[str]) -> str:
            dt = datetime.fromisoformat(m.group().replace("Z", "+00:00"))
            return "<instant>" if in_window(dt) else m.group()

        s = _INSTANT.sub(sub, s)
        return re.sub(B64_RE, lambda m: "b64:" + text(_b64_text(m.group()) or m.group()), s)

    if isinstance(value, list | tuple):
        return [_masked(v, c) for v in value]
    if isinstance(value, datetime):
        return "<instant>" if in_window(value) else value
    if isinstance(value, str):
        return text(value)
    return value


def _first_difference(x: Any, y: Any) -> str:
    for (path, u), (_, v) in zip(_leaves(x), _leaves(y), strict=False):
        if u != v:
            return f"at {list(path)}: rendered {str(u)[:200]!r}, sent {str(v)[:200]!r}"
    return "in shape"


@dataclass(frozen=True)
class Kept:
    """How a template's replay of another request differs from what the service sent for
    it: values kept from the captured request (or arrays of another length)."""

    values: int  # parameter values compared
    kept: int  # of them, replayed as captured where the service sent another value
    reshaped: int  # statements whose parameters had another shape (other sizes)
    examples: list[str]


def kept_values(template: Template, a: Captured, c: Captured) -> Kept:
    """Render ``template`` (made from ``a``) with ``c``'s request tokens, ids and instants and
    compare with what the service sent for ``c``, a different request of the same kind."""
    if a.shape() != c.shape():
        return Kept(0, 0, len(c.statements), ["the service sent other statements"])
    where = _id_places(a)
    ids = {
        gname: _id_at(c, where[template.origin[gname]]) or "" for gname, _kind in template.generated
    }
    rendered = render_params(template, {**c.tokens, **ids}, base=_floor_ms(c.started))
    want = _masked(_params(c), c)
    got = _masked(rendered, c)
    values = kept = reshaped = 0
    examples: list[str] = []
    for x, y in zip(got, want, strict=True):
        lx, ly = list(_leaves(x)), list(_leaves(y))
        if [p for p, _ in lx] != [p for p, _ in ly]:
            reshaped += 1
            continue
        for (_, u), (_, v) in zip(lx, ly, strict=True):
            values += 1
            if u != v:
                kept += 1
                if len(examples) < 3:
                    examples.append(f"{_excerpt(u, v)!r} for {_excerpt(v, u)!r}")
    return Kept(values, kept, reshaped, examples)


def _excerpt(u: Any, v: Any, width: int = 40) -> str:
    """Where ``u`` first differs from ``v``, a few characters around it."""
    if not isinstance(u, str) or not isinstance(v, str):
        return str(u)[:width]
    i = next((k for k, (p, q) in enumerate(zip(u, v, strict=False)) if p != q), min(len(u), len(v)))
    return u[max(0, i - width // 2) : i + width // 2]


def _id_places(a: Captured) -> dict[str, tuple[tuple[int, ...], int]]:
    """The first place (leaf path, index among its ids) of each id in ``a``'s parameters."""
    places: dict[str, tuple[tuple[int, ...], int]] = {}
    for path, leaf in _leaves(_params(a)):
        if isinstance(leaf, str):
            for k, found in enumerate(ID_RE.findall(leaf)):
                places.setdefault(found, (path, k))
    return places


def _id_at(c: Captured, place: tuple[tuple[int, ...], int]) -> str | None:
    path, k = place
    value: Any = _params(c)
    for i in path:
        if not isinstance(value, list | tuple) or i >= len(value):
            return None
        value = value[i]
    found = ID_RE.findall(value) if isinstance(value, str) else []
    return found[k] if k < len(found) else None


# --- rendering --------------------------------------------------------------------------------


Render = Callable[["Context"], Any]


@dataclass
class Context:
    values: dict[str, Any]  # tokens by name: request tokens and this replay's generated ids
    base: datetime  # the replay's now, to the millisecond


def new_uuid7(ms: int) -> str:
    """A time-ordered UUID (v7 layout), as the service makes its resource ids."""
    rand = bytearray(os.urandom(10))
    rand[0] = (rand[0] & 0x0F) | 0x70
    rand[2] = (rand[2] & 0x3F) | 0x80
    h = (ms.to_bytes(6, "big") + bytes(rand)).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _zone(zone: str) -> timezone:
    if zone == "Z":
        return UTC
    sign = -1 if zone[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))


def _format_instant(dt: datetime, digits: int, zone: str) -> str:
    local = dt.astimezone(_zone(zone))
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{local.microsecond:06d}"[:digits]
    return text + ("Z" if zone == "Z" else zone)


def compile_node(node: Any) -> tuple[bool, Any]:
    """(True, value) for a constant node; (False, render) otherwise."""
    tag, arg = node[0], node[1]
    if tag == "c":
        return True, arg
    if tag == "d":
        return True, datetime.fromisoformat(arg)
    if tag == "t":
        delta = timedelta(microseconds=arg)
        return False, lambda ctx: ctx.base + delta
    if tag == "k":
        return False, lambda ctx: ctx.values[arg]
    if tag == "l":
        compiled = [compile_node(n) for n in arg]
        if all(const for const, _ in compiled):
            return True, [v for _, v in compiled]
        items = [(const, v) for const, v in compiled]
        return False, lambda ctx: [v if const else v(ctx) for const, v in items]
    if tag == "s":
        return False, _compile_text(arg)
    raise ValueError(f"unknown template node {tag!r}")


def _compile_text(parts: Sequence[Any]) -> Render:
    pieces: list[Any] = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
        elif part[0] == "k":
            name = part[1]
            pieces.append(lambda ctx, name=name: ctx.values[name])
        elif part[0] == "t":
            delta, digits, zone = timedelta(microseconds=part[1]), part[2], part[3]
            pieces.append(
                lambda ctx, d=delta, n=digits, z=zone: _format_instant(ctx.base + d, n, z)
            )
        elif part[0] == "b":
            inner = _compile_text(part[1])
            pieces.append(lambda ctx, f=inner: base64.b64encode(f(ctx).encode()).decode())
        else:
            raise ValueError(f"unknown text part {part!r}")
    return lambda ctx: "".join(p if isinstance(p, str) else p(ctx) for p in pieces)


def _compile_params(nodes: Sequence[Any]) -> Render:
    compiled = [compile_node(n) for n in nodes]
    if all(const for const, _ in compiled):
        values = [v for _, v in compiled]
        return lambda ctx: values
    return lambda ctx: [v if const else v(ctx) for const, v in compiled]


@dataclass
class CompiledStep:
    sql: str
    render: Render  # -> positional arguments (a list of them for an executemany)
    checkout: int
    transaction: int | None
    many: bool
    grouped: bool  # merged with concurrent replays' (GroupCommit)
    begins: bool  # the first statement of its transaction
    ends: str | None  # "commit" / "rollback" after it: its transaction's last statement
    releases: bool  # its checkout's last statement


@dataclass
class Compiled:
    template: Template
    steps: list[CompiledStep]
    response: Render | None

    def context(self, tokens: Mapping[str, Any]) -> Context:
        now = time.time()
        ms = int(now * 1000)
        values = dict(tokens)
        for name, kind in self.template.generated:
            values[name] = new_uuid7(ms) if kind == "uuid" else os.urandom(16).hex()
        base = datetime.fromtimestamp(ms / 1000, UTC)
        return Context(values, base)


def compile_template(template: Template) -> Compiled:
    steps: list[CompiledStep] = []
    last_in_tx = {s.transaction: i for i, s in enumerate(template.steps)}
    last_in_checkout = {s.checkout: i for i, s in enumerate(template.steps)}
    seen_tx: set[int] = set()
    for i, s in enumerate(template.steps):
        if s.many:
            rows = [_compile_params(r) for r in s.params]
            render: Render = lambda ctx, rows=rows: [r(ctx) for r in rows]  # noqa: E731
        else:
            render = _compile_params(s.params)
        begins = s.transaction is not None and s.transaction not in seen_tx
        if s.transaction is not None:
            seen_tx.add(s.transaction)
        ends = (
            template.ends.get(s.transaction, "commit")
            if s.transaction is not None and last_in_tx[s.transaction] == i
            else None
        )
        steps.append(
            CompiledStep(
                sql=s.sql,
                render=render,
                checkout=s.checkout,
                transaction=s.transaction,
                many=s.many,
                grouped=s.grouped,
                begins=begins,
                ends=ends,
                releases=last_in_checkout[s.checkout] == i,
            )
        )
    response = None
    if template.response is not None:
        const, value = compile_node(template.response)
        response = (lambda ctx, v=value: v) if const else value
    return Compiled(template, steps, response)


def render_params(
    template: Template, values: Mapping[str, Any], *, base: datetime
) -> list[list[Any]]:
    """Every statement's arguments for one request (checks and tests)."""
    compiled = compile_template(template)
    ctx = Context(dict(values), base)
    return [s.render(ctx) for s in compiled.steps]


# --- replaying --------------------------------------------------------------------------------


class Replay:
    """One request's replay on an asyncpg pool: ``run`` steps (of one template, or the first
    steps of one and the rest of another), then ``close``."""

    def __init__(self, pool: Any, ctx: Context, groups: GroupCommit | None = None) -> None:
        self.pool = pool
        self.ctx = ctx
        self.groups = groups  # None: grouped statements too are sent on their own
        self.conns: dict[int, Any] = {}
        self.open: dict[int, Any] = {}  # transaction -> asyncpg Transaction

    async def run(self, steps: Sequence[CompiledStep]) -> list[list[Any]]:
        """Each step's rows (an executemany and a grouped statement: none)."""
        results: list[list[Any]] = []
        for step in steps:
            if step.grouped and self.groups is not None:
                await self.groups.write(step.sql, step.render(self.ctx))
                results.append([])
                continue
            conn = self.conns.get(step.checkout)
            if conn is None:
                conn = self.conns[step.checkout] = await self.pool.acquire()
            if step.begins:
                tr = self.open[step.transaction] = conn.transaction()  # type: ignore[index]
                await tr.start()
            args = step.render(self.ctx)
            if step.many:
                await conn.executemany(step.sql, args)
                results.append([])
            else:
                results.append(await conn.fetch(step.sql, *args))
            if step.ends is not None:
                tr = self.open.pop(step.transaction)  # type: ignore[arg-type]
                await (tr.commit() if step.ends == "commit" else tr.rollback())
            if step.releases:
                await self.pool.release(self.conns.pop(step.checkout))
        return results

    async def close(self) -> None:
        """Roll back what is still open (a failed step) and give every connection back."""
        for tr in self.open.values():
            with contextlib.suppress(Exception):  # the connection goes back to the pool regardless
                await tr.rollback()
        self.open.clear()
        for conn in self.conns.values():
            await self.pool.release(conn)
        self.conns.clear()


class GroupCommit:
    """The service's group commit, for replays (one per process, like the service's).

    The service writes the AuditEvent of a read or search through ``GroupCommitter``
    (``service/storage/group_commit.py``): every request waiting while a flush runs is written
    by the next flush, in ONE statement in autocommit whose array parameters are the
    concatenation of theirs, and each request answers once its flush has committed. A
    capture sees one request alone (a flush of one); replayed one by one under concurrency,
    those statements would cost a commit each where the service pays one per flush. Here the
    replays' grouped statements are merged the same way: a write starts a flush at once when
    none is running, else waits for the next one; at most ``max_batch`` per flush (the
    service's ``MAX_BATCH``)."""

    def __init__(self, pool: Any, *, max_batch: int = 256) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._pending: dict[str, list[tuple[list[Any], asyncio.Future[None]]]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self.flushes = 0
        self.items = 0

    async def write(self, sql: str, args: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.setdefault(sql, []).append((args, done))
        running = self._running.get(sql)
        if running is None or running.done():
            self._running[sql] = loop.create_task(self._drain(sql))
        await asyncio.shield(done)

    async def _drain(self, sql: str) -> None:
        while self._pending.get(sql):
            pending = self._pending[sql]
            batch, self._pending[sql] = pending[: self.max_batch], pending[self.max_batch :]
            merged = [
                [value for args, _ in batch for value in args[i]] for i in range(len(batch[0][0]))
            ]
            try:
                async with self.pool.acquire() as conn:
                    await conn.fetch(sql, *merged)
            except BaseException as exc:  # handed to every waiter
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                    raise
                continue
            self.flushes += 1
            self.items += len(batch)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
