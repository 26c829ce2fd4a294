"""The built-in instruments, CodeSystems and ValueSets shipped as JSON."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from service.questionnaires.definition import expand
from service.questionnaires.instruments import (
    builtin_code_systems,
    builtin_value_sets,
    load_builtin_instruments,
)
from service.questionnaires.scoring import score_response
from service.questionnaires.urls import HANDOFF_FHIR_BASE, OVERDOSE_RISK_FACTOR_CS, TRIAGE_RULE_EXT

PANELS = {"taps": "96841-2", "audit-c": "72109-2", "dast-10": "82666-9"}


def test_keys_and_canonicals(instruments):
    assert set(instruments) == {"taps", "audit-c", "dast-10", "overdose-risk"}
    for key, questionnaire in instruments.items():
        assert questionnaire["resourceType"] == "Questionnaire"
        assert questionnaire["id"] == key
        assert questionnaire["url"] == f"{HANDOFF_FHIR_BASE}/Questionnaire/{key}"
        assert questionnaire["version"] == "1.0.0"
        assert questionnaire["status"] == "active"
        assert len(questionnaire["copyright"]) > 40


def test_loinc_panels(instruments):
    for key, panel in PANELS.items():
        assert instruments[key]["code"] == [
            {
                "system": "http://loinc.org",
                "code": panel,
                "display": instruments[key]["code"][0]["display"],
            }
        ]
    assert all(c["system"] != "http://loinc.org" for c in instruments["overdose-risk"]["code"])


def test_licences_are_stated(instruments):
    assert "Public domain" in instruments["taps"]["copyright"]
    assert "World Health Organization" in instruments["audit-c"]["copyright"]
    assert "non-commercial" in instruments["dast-10"]["copyright"]
    assert "NOT a validated" in instruments["overdose-risk"]["copyright"]


def codings(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
            yield node
        for value in node.values():
            yield from codings(value)
    elif isinstance(node, list):
        for value in node:
            yield from codings(value)


def concepts(concept_list: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for concept in concept_list:
        yield concept
        yield from concepts(concept.get("concept", []))


def test_every_local_code_used_is_defined(instruments, tcuds5):
    defined = {
        (cs["url"], c["code"]): c["display"]
        for cs in builtin_code_systems()
        for c in concepts(cs["concept"])
    }
    used = [
        c
        for q in [*instruments.values(), tcuds5]
        for c in codings(q)
        if c["system"].startswith(f"{HANDOFF_FHIR_BASE}/CodeSystem/")
    ]
    assert used
    for coding in used:
        key = (coding["system"], coding["code"])
        assert key in defined, key
        assert coding.get("display") in (None, defined[key]), key


def test_code_systems_are_complete_and_counted():
    systems = builtin_code_systems()
    assert {cs["id"] for cs in systems} == {
        "overdose-risk-factor",
        "screening-item",
        "screening-answer",
        "screening-interpretation",
    }
    for cs in systems:
        assert cs["url"] == f"{HANDOFF_FHIR_BASE}/CodeSystem/{cs['id']}"
        assert cs["content"] == "complete"
        assert cs["count"] == sum(1 for _ in concepts(cs["concept"]))
    factors = next(cs for cs in systems if cs["url"] == OVERDOSE_RISK_FACTOR_CS)
    top_level = [c["code"] for c in factors["concept"]]
    # the §1.3 risk factor table, one concept per row
    assert len(top_level) == 11


def test_value_sets_expand():
    value_sets = {vs["id"]: vs for vs in builtin_value_sets()}
    assert [c["code"] for c, _w in expand(value_sets["yes-no"]) or []] == ["LA33-6", "LA32-8"]
    assert len(expand(value_sets["taps-frequency"]) or []) == 5
    factor_codes = {c["code"] for c, _w in expand(value_sets["overdose-risk-factor"]) or []}
    assert {"prior-overdose", "no-naloxone-at-release", "opioid-use-not-on-moud"} <= factor_codes


def test_loader_returns_copies():
    first = load_builtin_instruments()
    first["dast-10"]["item"].clear()
    builtin_code_systems()[0]["concept"].clear()
    assert load_builtin_instruments()["dast-10"]["item"]
    assert builtin_code_systems()[0]["concept"]


def test_triage_rule_is_data_not_code(instruments, respond):
    checklist = copy.deepcopy(instruments["overdose-risk"])
    answers = {
        "opioid-use-pre-custody": False,
        "overdose-ever": True,
        "fentanyl-use": "LA32-8",
        "co-use": ["none-of-these"],
        "injection-past-12m": False,
        "naloxone-in-hand": True,
        "moud-at-release": "no-moud",
    }
    before = score_response(checklist, respond(checklist, answers)).triage
    assert before is not None
    assert [f.code for f in before.factors] == ["prior-overdose"]

    # a site edits the rule: drop "prior overdose", bump the version
    rule = next(e for e in checklist["extension"] if e["url"] == TRIAGE_RULE_EXT)
    rule["extension"] = [
        p
        for p in rule["extension"]
        if not (
            p["url"] == "condition" and p["extension"][0]["valueCoding"]["code"] == "prior-overdose"
        )
    ]
    next(p for p in rule["extension"] if p["url"] == "version")["valueString"] = "1.1.0"

    after = score_response(checklist, respond(checklist, answers)).triage
    assert after is not None
    assert (after.flagged, after.rule_version) == (False, "1.1.0")
