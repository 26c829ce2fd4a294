"""Search parameter definitions checked against the R4 models they index."""

from __future__ import annotations

import re

from fhir.resources.R4B import get_fhir_model_class

from service.search.params import BY_TYPE, SearchParam


def _type_name(model: type, field: str) -> str:
    """The R4 type of ``model.field`` (e.g. ``Period``), "primitive" for a primitive."""
    found = re.search(r"abc\.(\w+)Type\b", str(model.model_fields[field].annotation))
    return found.group(1) if found else "primitive"


def _element_type(resource_type: str, path: str) -> str:
    """The R4 type name of ``path`` in ``resource_type``, from the fhir.resources R4B models."""
    model = get_fhir_model_class(resource_type)
    *parents, last = path.split(".")
    for segment in parents:
        model = get_fhir_model_class(_type_name(model, segment))
    return _type_name(model, last)


def _date_params() -> list[tuple[str, SearchParam]]:
    return [(rtype, p) for rtype, ps in BY_TYPE.items() for p in ps if p.kind == "date"]


def test_open_ended_date_parameters_are_exactly_those_with_a_period() -> None:
    """Only Periods may lack a start or an end; a parameter wrongly called closed would lose
    its open-ended values from gt/ge/lt/le searches, one wrongly called open could not use
    ``ix_search_high`` for them."""
    checked = 0
    for rtype, param in _date_params():
        has_period = any(_element_type(rtype, path) == "Period" for path in param.paths)
        assert param.open_ended == has_period, (rtype, param.name, param.paths)
        checked += 1
    assert checked >= 14
    # Both kinds are present, so the check above can fail either way.
    assert {p.open_ended for _, p in _date_params()} == {True, False}
