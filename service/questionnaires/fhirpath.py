"""FHIRPath for Questionnaire expressions: fhirpathpy with the R4 model and three functions.

fhirpathpy 2.2.4 needs the R4 model for choice elements (``answer.value``) and has two gaps we
patch through its user invocation table:

- ``sum()`` only adds literal numbers; on element values it raises a TypeError. Ours adds any
  numbers. Site Questionnaires should still prefer ``aggregate($this + $total, 0)``, which
  every engine (fhirpath.js, HAPI, fhirpathpy unpatched) evaluates the same way.
- ``weight()`` (SDC 3) and its older name ``ordinal()`` are not implemented. Before evaluating,
  the scoring engine copies each answer option's weight onto the answer's ``valueCoding`` as
  an ``ordinalValue`` extension (preprocessing); ours reads it back from there.

A third gap we cannot patch: a union of elements loses their types, so
``(item.where(linkId='a') | item.where(linkId='b')).answer.value`` is empty. Select with
``item.where(linkId in ('a' | 'b'))`` instead.

Evaluation gets ``%resource`` and ``%rootResource`` (the QuestionnaireResponse),
``%questionnaire`` and any SDC variables; the expression's context is the response root.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

from antlr4 import CommonTokenStream, InputStream  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from service.questionnaires.urls import WEIGHT_EXTS
from service.questionnaires.values import is_number, to_decimal


class FhirPathError(ValueError):
    """An expression failed to parse or evaluate."""


def _sum(inputs: Sequence[Any]) -> list[Any]:
    total: int | Decimal = 0
    for value in inputs:
        if not is_number(value):
            raise FhirPathError(f"sum() needs numbers, got {type(value).__name__}")
        total = total + (value if isinstance(value, int) else to_decimal(value))
    return [total]


def _weight(inputs: Sequence[Any]) -> list[Any]:
    weights: list[Any] = []
    for value in inputs:
        if not isinstance(value, Mapping):
            continue
        for ext in value.get("extension") or []:
            if isinstance(ext, Mapping) and ext.get("url") in WEIGHT_EXTS:
                found = ext.get("valueDecimal", ext.get("valueInteger"))
                if is_number(found):
                    weights.append(found)
                    break
    return weights


_FUNCTIONS: dict[str, Any] = {
    "sum": {"fn": _sum, "arity": {0: []}},
    "weight": {"fn": _weight, "arity": {0: []}},
    "ordinal": {"fn": _weight, "arity": {0: []}},
}


@lru_cache(maxsize=1024)
def _compiled(expression: str) -> Callable[..., list[Any]]:
    syntax = syntax_problem(expression)
    if syntax is not None:
        raise FhirPathError(syntax)
    try:
        compiled: Callable[..., list[Any]] = fhirpath_compile(
            expression, models["r4"], {"userInvocationTable": _FUNCTIONS}
        )
    except Exception as exc:  # fhirpathpy raises bare Exceptions from its parser
        raise FhirPathError(f"cannot parse: {exc}") from exc
    return compiled


def evaluate(
    expression: str,
    resource: Mapping[str, Any],
    *,
    questionnaire: Mapping[str, Any],
    variables: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Evaluate against a QuestionnaireResponse. Raises FhirPathError on any failure."""
    context = {
        **(variables or {}),
        "resource": resource,
        "rootResource": resource,
        "questionnaire": questionnaire,
    }
    fn = _compiled(expression)
    try:
        return fn(resource, context)
    except FhirPathError:
        raise
    except Exception as exc:  # fhirpathpy signals every evaluation error this way
        raise FhirPathError(str(exc) or type(exc).__name__) from exc


class _CollectErrors(ErrorListener):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def syntaxError(  # antlr's method name
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        self.errors.append(f"column {column + 1}: {msg}")


def syntax_problem(expression: str) -> str | None:
    """A syntax error message, or None. fhirpathpy's own parser recovers silently from most
    syntax errors (``'a b'`` parses as ``a``), so we run its grammar with a strict listener."""
    listener = _CollectErrors()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    try:
        parser.entireExpression()  # type: ignore[no-untyped-call]
    except Exception as exc:  # antlr raises on some lexer errors despite the listener
        return f"syntax error: {exc}"
    return f"syntax error at {listener.errors[0]}" if listener.errors else None
