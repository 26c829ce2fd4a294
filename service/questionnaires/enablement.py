"""``enableWhen`` evaluation (R4 semantics) over a response tree.

- An item is enabled when its parent item is enabled and its own conditions hold
  (``enableBehavior`` ``all`` or ``any``; ``all`` when absent).
- The referenced question is looked up from the item's context outwards: first among the
  descendants of the innermost enclosing item instance, then of its parent, and so on up to the
  response root. This picks the sibling instance inside a repeating group.
- Answers of a *disabled* question count as no answers.
- Operators follow the R4 definitions: ``exists`` compares "has an answer" with the boolean;
  ``=`` and the orderings hold if at least one answer satisfies them (so they are false when
  there is no answer); ``!=`` holds if *no* answer equals the value (so it is true when there
  is no answer). Values that cannot be ordered (different units or precision) never satisfy an
  ordering.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.questionnaires.definition import ItemDef, QuestionnaireIndex
from service.questionnaires.tree import ResponseNode
from service.questionnaires.values import TypedValue, compare, typed_values, values_equal

OPERATORS = frozenset({"exists", "=", "!=", ">", "<", ">=", "<="})


class Enablement:
    """Memoised enabled/disabled decisions for one response."""

    def __init__(self, index: QuestionnaireIndex, root: ResponseNode) -> None:
        self._index = index
        self._root = root
        self._memo: dict[tuple[int, int], bool] = {}
        self._in_progress: set[tuple[int, int]] = set()

    def node_enabled(self, node: ResponseNode) -> bool:
        """Whether a matched response item is enabled (unmatched items count as disabled)."""
        if node.definition is None or node.parent is None:
            return node.parent is None
        return self.is_enabled(node.definition, node.parent)

    def is_enabled(self, item: ItemDef, context: ResponseNode) -> bool:
        """Whether ``item`` is enabled when it sits (or would sit) inside ``context``."""
        key = (id(item), id(context))
        if key in self._memo:
            return self._memo[key]
        if key in self._in_progress:
            return False  # a dependency cycle: ``check_questionnaire`` reports it
        self._in_progress.add(key)
        try:
            enabled = (context.is_root or self.node_enabled(context)) and self._own_conditions(
                item, context
            )
        finally:
            self._in_progress.discard(key)
        self._memo[key] = enabled
        return enabled

    def _own_conditions(self, item: ItemDef, context: ResponseNode) -> bool:
        conditions = item.data.get("enableWhen")
        if not isinstance(conditions, list) or not conditions:
            return True
        results = [self._condition(c, context) for c in conditions if isinstance(c, Mapping)]
        if item.data.get("enableBehavior") == "any":
            return any(results)
        return all(results)

    def _condition(self, condition: Mapping[str, Any], context: ResponseNode) -> bool:
        operator = condition.get("operator")
        expected = typed_values(condition, "answer")
        if operator not in OPERATORS or len(expected) != 1:
            return False
        answers = self.answers_for(str(condition.get("question", "")), context)
        target = expected[0]
        if operator == "exists":
            return bool(answers) == (target.value is True)
        if operator == "=":
            return any(values_equal(a, target) for a in answers)
        if operator == "!=":
            return not any(values_equal(a, target) for a in answers)
        for answer in answers:
            order = compare(answer, target)
            if order is None:
                continue
            if (
                (operator == ">" and order > 0)
                or (operator == "<" and order < 0)
                or (operator == ">=" and order >= 0)
                or (operator == "<=" and order <= 0)
            ):
                return True
        return False

    def answers_for(self, link_id: str, context: ResponseNode) -> list[TypedValue]:
        """Answer values of the nearest enabled instance(s) of question ``link_id``."""
        for scope in context.ancestors_and_self():
            candidates = [n for n in _scope_nodes(scope) if n.link_id == link_id]
            if candidates:
                values: list[TypedValue] = []
                for node in candidates:
                    if node.definition is not None and self.node_enabled(node):
                        for answer in node.answers:
                            values.extend(typed_values(answer)[:1])
                return values
        return []


def _scope_nodes(scope: ResponseNode) -> list[ResponseNode]:
    nodes = [] if scope.is_root else [scope]
    nodes.extend(scope.descendants())
    return nodes
