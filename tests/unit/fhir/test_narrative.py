"""Narrative XHTML (txt-1): what a provider's EHR renders may carry no script."""

from __future__ import annotations

import copy

import pytest

from service.errors import InvalidResourceError
from service.fhir.narrative import narrative_problem
from service.fhir.validate import validate_resource
from tests.unit.fhir.samples import sample

NS = 'xmlns="http://www.w3.org/1999/xhtml"'


@pytest.mark.parametrize(
    "div",
    [
        f"<div {NS}>Dana Rivera</div>",
        f'<div {NS}><p>Referred <b>before</b> release</p><a href="https://example.org">'
        f"link</a><table><tr><td>1</td></tr></table><br/></div>",
        f'<div {NS}><img src="data:image/png;base64,iVBORw0KGgo=" alt="x"/></div>',
        f"<div {NS}>\n    </div>",  # empty (txt-2): let through, as an official example has one
    ],
)
def test_plain_xhtml_passes(div: str) -> None:
    assert narrative_problem(div) is None


@pytest.mark.parametrize(
    ("div", "says"),
    [
        ("hello", "XHTML <div>"),
        ("<div><p>no namespace</p></div>", "xmlns"),
        (f"<div {NS}><p>unclosed</div>", "well-formed"),
        (f"<div {NS}><script>alert(1)</script></div>", "<script>"),
        (f'<div {NS}><iframe src="https://x"></iframe></div>', "<iframe>"),
        (f"<div {NS}><form><input/></form></div>", "<form>"),
        (f'<div {NS}><p onclick="x()">hi</p></div>', "event attribute"),
        (f'<div {NS}><img src="x" onerror="x()"/></div>', "event attribute"),
        (f'<div {NS}><a href=" JavaScript:x()">hi</a></div>', "script URL"),
        (f'<div {NS}><svg xmlns="http://www.w3.org/2000/svg"/></div>', "outside the XHTML"),
        (
            f'<div {NS} xmlns:x="http://www.w3.org/1999/xlink"><a x:href="y">z</a></div>',
            "namespaced",
        ),
        (f"<div {NS}>a&nbsp;b</div>", "well-formed"),  # HTML entities are not XML's
        ('<!DOCTYPE d [<!ENTITY a "aaaa">]><div>&a;</div>', "XHTML <div>"),
    ],
)
def test_scripts_and_non_xhtml_are_refused(div: str, says: str) -> None:
    problem = narrative_problem(div)
    assert problem is not None and says in problem, problem


def test_validation_reports_the_narrative_where_it_is() -> None:
    body = copy.deepcopy(sample("Patient"))
    body["contained"] = [
        {
            "resourceType": "Organization",
            "id": "o",
            "text": {"status": "generated", "div": f"<div {NS}><script>x()</script></div>"},
        }
    ]
    with pytest.raises(InvalidResourceError) as info:
        validate_resource(body, expected_type="Patient")
    [issue] = info.value.issues
    assert issue.expression == ("Patient.contained[0].text.div",)
    assert issue.code == "invariant" and "<script>" in issue.diagnostics
