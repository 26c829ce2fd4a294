"""Read-only index over a Questionnaire dict: items by linkId with their parents, and the answer
options of each choice item (inline ``answerOption`` or a resolvable ``answerValueSet``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from service.questionnaires.instruments.loader import find_code_system, find_value_set
from service.questionnaires.urls import (
    CALCULATED_EXPRESSION_EXT,
    FHIRPATH_LANGUAGE,
    WEIGHT_EXTS,
)
from service.questionnaires.values import TypedValue, is_number, to_decimal, typed_values


def canonical_of(questionnaire: Mapping[str, Any]) -> str:
    """``url|version`` (just ``url`` when unversioned), as QuestionnaireResponse.questionnaire."""
    url = str(questionnaire.get("url", ""))
    version = questionnaire.get("version")
    return f"{url}|{version}" if version else url


def extensions(element: Mapping[str, Any], url: str) -> list[Mapping[str, Any]]:
    """The element's extensions with this URL (malformed entries are skipped)."""
    found = element.get("extension")
    if not isinstance(found, list):
        return []
    return [e for e in found if isinstance(e, Mapping) and e.get("url") == url]


def extension(element: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    found = extensions(element, url)
    return found[0] if found else None


def weight_of(element: Mapping[str, Any]) -> Decimal | None:
    """itemWeight / ordinalValue on an answerOption, ValueSet concept or Coding."""
    for url in WEIGHT_EXTS:
        ext = extension(element, url)
        if ext is not None:
            for key in ("valueDecimal", "valueInteger"):
                if is_number(ext.get(key)):
                    return to_decimal(ext[key])
    return None


@dataclass(frozen=True)
class Option:
    """One permitted answer of a choice item, with its score weight if it has one."""

    value: TypedValue
    weight: Decimal | None = None

    @property
    def code(self) -> str | None:
        return self.value.value.get("code") if self.value.kind == "Coding" else None

    @property
    def display(self) -> str | None:
        if self.value.kind == "Coding":
            display = self.value.value.get("display")
            return display if isinstance(display, str) else None
        return str(self.value.value)


@dataclass(frozen=True)
class Options:
    """Resolved answer options of an item. ``resolved`` is False for an answerValueSet we cannot
    expand (unknown canonical, filters, unknown code system)."""

    options: tuple[Option, ...] = ()
    resolved: bool = True
    source: str | None = None  # the answerValueSet canonical, when there is one


@dataclass(eq=False)
class ItemDef:
    """A Questionnaire item with its position in the tree."""

    data: Mapping[str, Any]
    parent: ItemDef | None
    children: list[ItemDef] = field(default_factory=list)

    @property
    def link_id(self) -> str:
        return str(self.data.get("linkId", ""))

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))

    @property
    def text(self) -> str | None:
        text = self.data.get("text")
        return text if isinstance(text, str) else None

    @property
    def required(self) -> bool:
        return self.data.get("required") is True

    @property
    def repeats(self) -> bool:
        return self.data.get("repeats") is True

    @property
    def is_question(self) -> bool:
        return self.type not in ("group", "display")

    @property
    def calculated_expression(self) -> str | None:
        ext = extension(self.data, CALCULATED_EXPRESSION_EXT)
        if ext is None:
            return None
        expr = ext.get("valueExpression")
        if not isinstance(expr, Mapping) or expr.get("language") != FHIRPATH_LANGUAGE:
            return None
        text = expr.get("expression")
        return text if isinstance(text, str) else None

    @property
    def is_calculated(self) -> bool:
        return extension(self.data, CALCULATED_EXPRESSION_EXT) is not None

    @property
    def codes(self) -> list[Mapping[str, Any]]:
        codes = self.data.get("code")
        return [c for c in codes if isinstance(c, Mapping)] if isinstance(codes, list) else []

    def ancestors(self) -> list[ItemDef]:
        """Outermost first, excluding self."""
        chain: list[ItemDef] = []
        node = self.parent
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain[::-1]


class QuestionnaireIndex:
    """Items by linkId (first occurrence wins; duplicates are reported by ``check``)."""

    def __init__(self, questionnaire: Mapping[str, Any]) -> None:
        self.questionnaire = questionnaire
        self.roots: list[ItemDef] = []
        self.by_link_id: dict[str, ItemDef] = {}
        self.duplicates: list[str] = []
        self._build(questionnaire.get("item"), parent=None, into=self.roots)
        self._options: dict[int, Options] = {}

    def _build(self, items: Any, *, parent: ItemDef | None, into: list[ItemDef]) -> None:
        if not isinstance(items, list):
            return
        for raw in items:
            if not isinstance(raw, Mapping):
                continue
            item = ItemDef(raw, parent)
            into.append(item)
            if item.link_id in self.by_link_id:
                self.duplicates.append(item.link_id)
            else:
                self.by_link_id[item.link_id] = item
            self._build(raw.get("item"), parent=item, into=item.children)

    def children_of(self, parent: ItemDef | None) -> list[ItemDef]:
        return self.roots if parent is None else parent.children

    def walk(self) -> Iterator[ItemDef]:
        """Every item, depth first in document order."""
        stack = list(reversed(self.roots))
        while stack:
            item = stack.pop()
            yield item
            stack.extend(reversed(item.children))

    def options(self, item: ItemDef) -> Options:
        cached = self._options.get(id(item))
        if cached is None:
            cached = self._resolve_options(item)
            self._options[id(item)] = cached
        return cached

    def _resolve_options(self, item: ItemDef) -> Options:
        raw_options = item.data.get("answerOption")
        if isinstance(raw_options, list):
            options = []
            for raw in raw_options:
                if not isinstance(raw, Mapping):
                    continue
                for value in typed_values(raw)[:1]:
                    options.append(Option(value, weight_of(raw)))
            return Options(tuple(options))
        canonical = item.data.get("answerValueSet")
        if isinstance(canonical, str):
            return self._value_set_options(canonical)
        return Options()

    def _value_set_options(self, canonical: str) -> Options:
        if canonical.startswith("#"):
            value_set = next(
                (
                    r
                    for r in self.questionnaire.get("contained") or []
                    if isinstance(r, Mapping)
                    and r.get("resourceType") == "ValueSet"
                    and r.get("id") == canonical[1:]
                ),
                None,
            )
        else:
            value_set = find_value_set(canonical)
        if value_set is None:
            return Options(resolved=False, source=canonical)
        codings = expand(value_set)
        if codings is None:
            return Options(resolved=False, source=canonical)
        return Options(
            tuple(Option(TypedValue("Coding", c), w) for c, w in codings), source=canonical
        )


def expand(value_set: Mapping[str, Any]) -> list[tuple[dict[str, Any], Decimal | None]] | None:
    """Codings (with weights) of a ValueSet from its expansion or an enumerable compose.

    ``compose.include`` may list concepts, or name a whole built-in CodeSystem. Filters,
    imported value sets, excludes and unknown code systems make the set non-enumerable: None.
    """
    expansion = value_set.get("expansion")
    if isinstance(expansion, Mapping) and isinstance(expansion.get("contains"), list):
        return list(_expansion_codings(expansion["contains"]))
    compose = value_set.get("compose")
    if not isinstance(compose, Mapping) or compose.get("exclude"):
        return None
    result: list[tuple[dict[str, Any], Decimal | None]] = []
    for include in compose.get("include") or []:
        if not isinstance(include, Mapping) or include.get("filter") or include.get("valueSet"):
            return None
        system = include.get("system")
        if not isinstance(system, str):
            return None
        concepts = include.get("concept")
        if concepts is None:
            code_system = find_code_system(system)
            if code_system is None:
                return None
            concepts = list(_flatten_concepts(code_system.get("concept") or []))
        for concept in concepts:
            if isinstance(concept, Mapping) and isinstance(concept.get("code"), str):
                coding = {"system": system, "code": concept["code"]}
                if isinstance(concept.get("display"), str):
                    coding["display"] = concept["display"]
                result.append((coding, weight_of(concept)))
    return result


def _expansion_codings(
    contains: Sequence[Any],
) -> Iterator[tuple[dict[str, Any], Decimal | None]]:
    for entry in contains:
        if not isinstance(entry, Mapping):
            continue
        if isinstance(entry.get("code"), str) and entry.get("abstract") is not True:
            coding = {k: entry[k] for k in ("system", "code", "display") if k in entry}
            yield coding, weight_of(entry)
        yield from _expansion_codings(entry.get("contains") or [])


def _flatten_concepts(concepts: Sequence[Any]) -> Iterator[Mapping[str, Any]]:
    for concept in concepts:
        if isinstance(concept, Mapping):
            yield concept
            yield from _flatten_concepts(concept.get("concept") or [])
