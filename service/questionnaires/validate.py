"""Check a QuestionnaireResponse against its Questionnaire and report every problem at once.

Issue codes: ``structure`` (unknown or misplaced linkId, answers on group/display items,
malformed answers), ``value`` (wrong answer type, bad format, out of range), ``code-invalid``
(coded answer not among the options), ``required`` (required enabled item unanswered in a
completed response), ``invariant`` (answer to a disabled item, several answers to a
non-repeating item), ``not-supported`` (answerValueSet we cannot expand), ``business-rule``
(response names another Questionnaire, bad status). Every issue's expression follows the
convention in ``service.questionnaires.tree``.

Required-ness follows R4: it only applies when ``status`` is ``completed`` or ``amended`` and
the item is enabled; a required item inside an optional group that was left out entirely is not
reported (the whole group was skipped), but a missing required group is. Calculated (score)
items are never required from the client: the service computes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from service.errors import Issue
from service.questionnaires.definition import (
    ItemDef,
    QuestionnaireIndex,
    extension,
)
from service.questionnaires.enablement import Enablement
from service.questionnaires.tree import ResponseNode, build_tree, item_step
from service.questionnaires.urls import MAX_VALUE_EXT, MIN_VALUE_EXT
from service.questionnaires.values import (
    KINDS_BY_ITEM_TYPE,
    TypedValue,
    compare,
    display_of,
    shape_problem,
    typed_values,
    values_equal,
)

RESPONSE_STATUSES = frozenset(
    {"in-progress", "completed", "amended", "entered-in-error", "stopped"}
)
COMPLETE_STATUSES = frozenset({"completed", "amended"})


def validate_response(questionnaire: Mapping[str, Any], response: Mapping[str, Any]) -> list[Issue]:
    """All problems of ``response`` against ``questionnaire``; an empty list means valid."""
    return _Validator(questionnaire, response).run()


def _error(code: str, diagnostics: str, expression: str) -> Issue:
    return Issue("error", code, diagnostics, (expression,))


class _Validator:
    def __init__(self, questionnaire: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        self.questionnaire = questionnaire
        self.response = response
        self.index = QuestionnaireIndex(questionnaire)
        self.root = build_tree(self.index, response)
        self.enablement = Enablement(self.index, self.root)
        self.complete = response.get("status") in COMPLETE_STATUSES
        self.issues: list[Issue] = []

    def run(self) -> list[Issue]:
        self._check_resource()
        self._check_children(self.root, None)
        return self.issues

    def _check_resource(self) -> None:
        if self.response.get("resourceType") != "QuestionnaireResponse":
            self.issues.append(
                _error("structure", "resourceType must be QuestionnaireResponse", "resourceType")
            )
        status = self.response.get("status")
        if status not in RESPONSE_STATUSES:
            self.issues.append(
                _error(
                    "value",
                    f"status must be one of {', '.join(sorted(RESPONSE_STATUSES))}",
                    "QuestionnaireResponse.status",
                )
            )
        url = self.questionnaire.get("url")
        named = self.response.get("questionnaire")
        if isinstance(url, str) and isinstance(named, str):
            named_url, _, named_version = named.partition("|")
            version = self.questionnaire.get("version")
            if named_url != url or (named_version and named_version != version):
                self.issues.append(
                    _error(
                        "business-rule",
                        f"response is for Questionnaire '{named}', not '{url}|{version}'",
                        "QuestionnaireResponse.questionnaire",
                    )
                )

    # --- structure and answers -----------------------------------------------------------

    def _check_children(self, node: ResponseNode, definition: ItemDef | None) -> None:
        counts = Counter(child.link_id for child in node.children)
        repeat_reported: set[str] = set()
        for child in node.children:
            if child.definition is None:
                self._report_unmatched(child, definition)
                continue
            repeating_group = child.definition.type == "group" and child.definition.repeats
            if (
                counts[child.link_id] > 1
                and not repeating_group
                and child.link_id not in repeat_reported
            ):
                repeat_reported.add(child.link_id)
                self.issues.append(
                    _error(
                        "invariant",
                        f"item '{child.link_id}' appears {counts[child.link_id]} times; "
                        "only repeating groups may; put repeated answers in one item",
                        child.path,
                    )
                )
            self._check_item(child, child.definition)
        if self.complete:
            self._check_required(node, definition)

    def _report_unmatched(self, child: ResponseNode, parent: ItemDef | None) -> None:
        if not child.link_id:
            self.issues.append(_error("structure", "item has no linkId", child.path))
            return
        elsewhere = self.index.by_link_id.get(child.link_id)
        if elsewhere is None:
            message = f"linkId '{child.link_id}' is not in the Questionnaire"
        else:
            where = elsewhere.parent.link_id if elsewhere.parent else "the top level"
            here = parent.link_id if parent else "the top level"
            message = (
                f"item '{child.link_id}' belongs under '{where}' in the Questionnaire, "
                f"not under '{here}'"
            )
        self.issues.append(_error("structure", message, child.path))

    def _check_item(self, node: ResponseNode, item: ItemDef) -> None:
        parent = node.parent
        starts_here = parent is None or parent.is_root or self.enablement.node_enabled(parent)
        if starts_here and not self.enablement.node_enabled(node) and node.has_any_answer():
            # reported once, where the disabled subtree starts
            self.issues.append(
                _error(
                    "invariant",
                    f"item '{item.link_id}' is disabled by its enableWhen conditions "
                    "and must not be answered",
                    node.path,
                )
            )
        if item.type == "display":
            if node.answers or node.children:
                self.issues.append(
                    _error(
                        "structure",
                        f"display item '{item.link_id}' cannot have answers or items",
                        node.path,
                    )
                )
            return
        if item.type == "group":
            if node.answers:
                self.issues.append(
                    _error(
                        "structure",
                        f"group item '{item.link_id}' cannot have answers",
                        node.path,
                    )
                )
            self._check_children(node, item)
            return
        self._check_answers(node, item)
        self._check_children(node, item)

    def _check_answers(self, node: ResponseNode, item: ItemDef) -> None:
        answers = node.answers
        if len(answers) > 1 and not item.repeats:
            self.issues.append(
                _error(
                    "invariant",
                    f"item '{item.link_id}' does not repeat but has {len(answers)} answers",
                    node.path,
                )
            )
        allowed = KINDS_BY_ITEM_TYPE.get(item.type, frozenset())
        options = self.index.options(item)
        if item.type in ("choice", "open-choice"):
            if options.source is not None:
                allowed = frozenset({"Coding"})
            elif options.options:
                allowed = frozenset(o.value.kind for o in options.options)
            if item.type == "open-choice":
                allowed |= {"String"}
        unresolved_reported = False
        for i, answer in enumerate(answers):
            path = f"{node.path}.answer[{i}]"
            values = typed_values(answer)
            if not values:
                if not answer.get("item"):
                    self.issues.append(
                        _error("structure", f"answer to '{item.link_id}' has no value", path)
                    )
                continue
            if len(values) > 1:
                self.issues.append(
                    _error(
                        "structure",
                        f"answer to '{item.link_id}' has more than one value[x]",
                        path,
                    )
                )
                continue
            value = values[0]
            if value.kind not in allowed:
                expected = " or ".join("value" + k for k in sorted(allowed)) or "no answer"
                self.issues.append(
                    _error(
                        "value",
                        f"item '{item.link_id}' is of type {item.type}: expected {expected}, "
                        f"got value{value.kind}",
                        path,
                    )
                )
                continue
            problem = shape_problem(value.kind, value.value)
            if problem is not None:
                self.issues.append(_error("value", f"answer to '{item.link_id}' {problem}", path))
                continue
            if item.type in ("choice", "open-choice"):
                if not options.resolved:
                    if not unresolved_reported:
                        unresolved_reported = True
                        self.issues.append(
                            _error(
                                "not-supported",
                                f"answerValueSet '{options.source}' of item '{item.link_id}' "
                                "is neither contained nor built in, so answers cannot be checked",
                                node.path,
                            )
                        )
                    continue
                free_text = item.type == "open-choice" and value.kind == "String"
                if not free_text and not any(values_equal(value, o.value) for o in options.options):
                    self.issues.append(
                        _error(
                            "code-invalid",
                            f"answer {display_of(value)} is not an answer option of "
                            f"'{item.link_id}'",
                            path,
                        )
                    )
                continue
            self._check_limits(item, value, path=path)

    def _check_limits(self, item: ItemDef, value: TypedValue, *, path: str) -> None:
        for url, wrong_side, word in (
            (MIN_VALUE_EXT, -1, "below the minimum"),
            (MAX_VALUE_EXT, 1, "above the maximum"),
        ):
            ext = extension(item.data, url)
            if ext is None:
                continue
            limits = typed_values(ext)
            if limits and compare(value, limits[0]) == wrong_side:
                self.issues.append(
                    _error(
                        "value",
                        f"answer to '{item.link_id}' is {word} {limits[0].value!r}",
                        path,
                    )
                )
        max_length = item.data.get("maxLength")
        if (
            isinstance(max_length, int)
            and isinstance(value.value, str)
            and len(value.value) > max_length
        ):
            self.issues.append(
                _error(
                    "value",
                    f"answer to '{item.link_id}' is longer than {max_length} characters",
                    path,
                )
            )

    # --- required -----------------------------------------------------------------------

    def _check_required(self, node: ResponseNode, definition: ItemDef | None) -> None:
        for item in self.index.children_of(definition):
            if not item.required or item.is_calculated or item.type == "display":
                continue
            present = [c for c in node.children if c.definition is item]
            if any(c.has_any_answer() for c in present):
                continue
            if not self.enablement.is_enabled(item, node):
                continue
            path = present[0].path if present else node.path + item_step(item.link_id)
            kind = "group" if item.type == "group" else "question"
            self.issues.append(
                _error(
                    "required",
                    f"required {kind} '{item.link_id}' is not answered",
                    path,
                )
            )
