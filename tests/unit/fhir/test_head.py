"""head_of reads a stored body's patient and Part 2 labels without parsing all of it; it must
answer exactly what the full parse answers, whatever the shape of the body."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.domain import sensitivity
from service.fhir.head import ResourceHead, head_of, patient_of

SUD = {"system": sensitivity.ACT_CODE, "code": "SUD"}
R = {"system": sensitivity.CONFIDENTIALITY, "code": "R"}
NORMAL = {"system": sensitivity.CONFIDENTIALITY, "code": "N"}

BODIES: list[dict[str, Any]] = [
    # A referral Task of a person, labelled, with a long note (skipped by the decoder).
    {
        "resourceType": "Task",
        "id": "t1",
        "meta": {"versionId": "2", "security": [R, SUD]},
        "status": "requested",
        "for": {"reference": "Patient/p1", "display": "J. Doe"},
        "note": [{"text": "x" * 3000}],
        "input": [{"type": {"text": "subject"}, "valueReference": {"reference": "Patient/p9"}}],
    },
    # Unlabelled (only a normal confidentiality code), about a person through ``subject``.
    {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"security": [NORMAL]},
        "subject": {"reference": "Patient/p2"},
    },
    # A Task for a Group: about no patient; a Consent names its ``patient``.
    {"resourceType": "Task", "id": "t2", "for": {"reference": "Group/g1"}},
    {"resourceType": "Consent", "id": "c1", "patient": {"reference": "Patient/p3"}},
    # The first Patient reference wins, in the order subject, for, patient.
    {
        "resourceType": "Task",
        "id": "t3",
        "for": {"reference": "Patient/p4"},
        "subject": {"reference": "Location/l1"},
    },
    # A Patient is about itself; no meta at all.
    {"resourceType": "Patient", "id": "p5", "name": [{"family": "Doe"}]},
    # Shapes the decoder does not expect: a reference that is no string, a list where an
    # object is expected, a security code that is a number, meta without security.
    {"resourceType": "Task", "id": "t4", "for": {"reference": 42}},
    {"resourceType": "Task", "id": "t5", "subject": [{"reference": "Patient/p6"}]},
    {"resourceType": "Task", "id": "t6", "meta": {"security": [{"code": 7}]}},
    {"resourceType": "Task", "id": "t7", "meta": {"tag": [SUD]}, "for": {"display": "x"}},
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: f"{b['resourceType']}-{b['id']}")
def test_head_answers_what_the_full_parse_answers(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body).decode()
    assert head_of(raw) == ResourceHead(patient_of(body), sensitivity.is_labelled(body))


def test_head_of_examples() -> None:
    heads = {b["id"]: head_of(orjson.dumps(b).decode()) for b in BODIES}
    assert heads["t1"] == ResourceHead("Patient/p1", True)
    assert heads["o1"] == ResourceHead("Patient/p2", False)
    assert heads["t2"] == ResourceHead(None, False)
    assert heads["c1"].patient == "Patient/p3"
    assert heads["t3"].patient == "Patient/p4"
    assert heads["p5"] == ResourceHead("Patient/p5", False)
    assert heads["t5"].patient is None  # not a Reference: about no one, as the full parse says
    assert heads["t7"] == ResourceHead(None, False)  # a tag is not a security label
