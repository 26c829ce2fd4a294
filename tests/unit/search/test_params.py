"""Search parameter definitions checked against the R4 models they index."""

from __future__ import annotations

import re

from fhir.resources.R4B import get_fhir_model_class

from service.search.params import BY_TYPE, SearchParam


def _element_type(resource_type: str, path: str) -> str:
    """The R4 type name of ``path`` in ``resource_type`` (e.g. ``Period``), from fhir.resources."""
    model = get_fhir_model_class(resource_type)
    type_name = resource_type
    for segment in path.split("."):
        annotation = str(model.model_fields[segment].annotation)
        found = re.search(r"abc\.(\w+)Type\b", annotation)
        type_name = found.group(1) if found else "primitive"
        if found and segment != path.rsplit(".", 1)[-1]:
            model = get_fhir_model_class(type_name)
    return type_name


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
