"""A QuestionnaireResponse as a tree of item instances matched to their Questionnaire items, and
the FHIRPath expressions we put in ``Issue.expression``.

Expression convention (used for every Issue this package reports about a response):
an exact FHIRPath from the resource root, one ``item.where(linkId='...')`` step per level, with
``answer[n]`` when the item sits under an answer and ``[n]`` when a repeating group has several
instances, e.g. ``QuestionnaireResponse.item.where(linkId='taps2-tobacco').item.where(
linkId='taps2-tobacco-use').answer[0]``. The linkId of the item concerned is always the last
``linkId='...'`` in the expression; ``link_id_of`` extracts it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from service.questionnaires.definition import ItemDef, QuestionnaireIndex

RESPONSE_ROOT = "QuestionnaireResponse"
QUESTIONNAIRE_ROOT = "Questionnaire"
_LINK_ID_RE = re.compile(r"linkId='((?:[^'\\]|\\.)*)'")


def quote(link_id: str) -> str:
    return link_id.replace("\\", "\\\\").replace("'", "\\'")


def item_step(link_id: str) -> str:
    return f".item.where(linkId='{quote(link_id)}')"


def link_id_of(expression: str) -> str | None:
    """The linkId an Issue expression points at (the innermost one), or None."""
    found = _LINK_ID_RE.findall(expression)
    if not found:
        return None
    return re.sub(r"\\(.)", r"\1", found[-1])


class ResponseNode:
    """One item instance of a QuestionnaireResponse (the root node stands for the resource)."""

    __slots__ = ("children", "data", "definition", "link_id", "parent", "path")

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        parent: ResponseNode | None,
        definition: ItemDef | None,
        path: str,
    ) -> None:
        self.data = data
        self.parent = parent
        self.definition = definition
        self.path = path
        self.link_id: str = str(data.get("linkId", "")) if parent is not None else ""
        self.children: list[ResponseNode] = []

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def answers(self) -> list[Mapping[str, Any]]:
        answers = self.data.get("answer")
        if not isinstance(answers, list):
            return []
        return [a for a in answers if isinstance(a, Mapping)]

    def ancestors_and_self(self) -> Iterator[ResponseNode]:
        node: ResponseNode | None = self
        while node is not None:
            yield node
            node = node.parent

    def descendants(self) -> Iterator[ResponseNode]:
        for child in self.children:
            yield child
            yield from child.descendants()

    def has_any_answer(self) -> bool:
        return bool(self.answers) or any(child.has_any_answer() for child in self.children)


def build_tree(index: QuestionnaireIndex, response: Mapping[str, Any]) -> ResponseNode:
    """Match every response item to the Questionnaire item with its linkId *at that position*
    (``definition`` stays None for unknown or misplaced linkIds)."""
    root = ResponseNode(response, parent=None, definition=None, path=RESPONSE_ROOT)
    _attach(index, root, definition=None)
    return root


def _attach(index: QuestionnaireIndex, node: ResponseNode, *, definition: ItemDef | None) -> None:
    expected = (
        {d.link_id: d for d in index.children_of(definition)}
        if (node.is_root or definition is not None)
        else {}
    )
    # children sit in item.item (groups) or in item.answer[n].item (follow-ups of a question)
    groups: list[tuple[str, list[Any]]] = [("", _items(node.data))]
    if not node.is_root:
        for i, answer in enumerate(node.data.get("answer") or []):
            if isinstance(answer, Mapping) and isinstance(answer.get("item"), list):
                groups.append((f".answer[{i}]", answer["item"]))
    for prefix, items in groups:
        counts = Counter(str(i.get("linkId", "")) for i in items if isinstance(i, Mapping))
        seen: Counter[str] = Counter()
        for raw in items:
            if not isinstance(raw, Mapping):
                continue
            link_id = str(raw.get("linkId", ""))
            path = node.path + prefix + item_step(link_id)
            if counts[link_id] > 1:
                path += f"[{seen[link_id]}]"
            seen[link_id] += 1
            child_def = expected.get(link_id)
            child = ResponseNode(raw, parent=node, definition=child_def, path=path)
            node.children.append(child)
            _attach(index, child, definition=child_def)


def _items(data: Mapping[str, Any]) -> list[Any]:
    items = data.get("item")
    return items if isinstance(items, list) else []
