"""Seeded random damage to valid resources: validation answers with InvalidResourceError or
passes, never crashes, and every issue it reports is well formed."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from service.errors import InvalidResourceError
from service.fhir.validate import MAX_DEPTH, validate_resource
from tests.unit.fhir.samples import sample, sample_types, task

JUNK: list[Any] = [
    None,
    "",
    " ",
    "1",
    "true",
    "bogus",
    "2024-13-45",
    1,
    -1,
    0,
    1.5,
    float("inf"),
    10**40,
    True,
    False,
    [],
    {},
    [None],
    [{}],
    {"x": 1},
    {"id": "x"},
    {"resourceType": "Patient"},
    ["a", None],
    "x" * 5000,
]
CODES = {"structure", "required", "value", "code-invalid", "invalid", "not-supported", "too-costly"}


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(_nodes(child, (*path, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(_nodes(child, (*path, index)))
    return found


def _junk(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(JUNK))  # never share one junk object between two places


def _damage(body: dict[str, Any], rng: random.Random) -> None:
    path = rng.choice(_nodes(body)[1:])
    parent: Any = body
    for part in path[:-1]:
        parent = parent[part]
    action = rng.random()
    if action < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action < 0.3 and isinstance(parent, dict):
        parent[rng.choice(["foo", "_foo", "valueString", "extension", "_" + str(path[-1])])] = (
            _junk(rng)
        )
    else:
        parent[path[-1]] = _junk(rng)


@pytest.mark.parametrize("seed", range(20))
def test_damaged_resources_never_crash_validation(seed: int) -> None:
    rng = random.Random(seed)
    rejected = 0
    for _ in range(40):
        resource_type = rng.choice(sample_types())
        body = sample(resource_type)
        for _ in range(rng.randint(1, 4)):
            _damage(body, rng)
        try:
            validate_resource(body, expected_type=resource_type)
        except InvalidResourceError as exc:
            rejected += 1
            for issue in exc.issues:
                assert issue.code in CODES, issue
                assert issue.severity == "error"
                assert issue.diagnostics
                for expression in issue.expression:
                    assert expression.startswith((resource_type, "resourceType")), issue
    assert rejected > 20  # the damage really is damage most of the time


def test_absurdly_deep_nesting_is_refused_not_crashed() -> None:
    ext: dict[str, Any] = {"url": "http://example.org/x", "valueString": "deep"}
    for _ in range(MAX_DEPTH * 3):
        ext = {"url": "http://example.org/x", "extension": [ext]}
    body = task()
    body["extension"] = [ext]
    with pytest.raises(InvalidResourceError) as info:
        validate_resource(body)
    assert [i.code for i in info.value.issues] == ["too-costly"]
