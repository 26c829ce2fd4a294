"""validate_resource: what it rejects, how it says so, and what it leaves alone."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from service.errors import InvalidResourceError, Issue
from service.fhir.r4 import SUPPORTED_TYPES
from service.fhir.validate import validate_resource
from tests.unit.fhir.samples import sample, sample_types, task

Mutation = Callable[[dict[str, Any]], None]


def rejected(body: Any, *, expected_type: str | None = None) -> list[Issue]:
    with pytest.raises(InvalidResourceError) as info:
        validate_resource(body, expected_type=expected_type)
    assert info.value.status == 400
    assert info.value.issues, "a rejection must say why"
    return list(info.value.issues)


def found(issues: list[Issue], code: str, expression: str) -> Issue:
    for issue in issues:
        if issue.code == code and expression in issue.expression:
            return issue
    raise AssertionError(f"no {code!r} issue at {expression!r} in {issues}")


# --- valid input ---------------------------------------------------------------------------


def test_samples_cover_every_supported_type() -> None:
    assert sorted(sample_types()) == sorted(SUPPORTED_TYPES)


@pytest.mark.parametrize("resource_type", SUPPORTED_TYPES)
def test_valid_resource_of_each_supported_type_passes(resource_type: str) -> None:
    validate_resource(sample(resource_type), expected_type=resource_type)
    validate_resource(sample(resource_type))


def test_validation_leaves_the_body_exactly_as_sent() -> None:
    body = task()
    body["contained"] = [{"resourceType": "Patient", "id": "p", "gender": "other"}]
    body["for"] = {"reference": "#p"}
    before = copy.deepcopy(body)
    validate_resource(body, expected_type="Task")
    assert body == before
    assert body["authoredOn"] == "2024-05-02T10:15:00+00:00"  # not normalised to "Z"
    assert body["meta"]["lastUpdated"] == "2024-05-02T10:15:30.123+00:00"


def test_an_invalid_body_is_not_modified_either() -> None:
    body = task()
    body["restriction"]["repetitions"] = "1"
    before = copy.deepcopy(body)
    rejected(body)
    assert body == before


def test_required_primitive_may_be_replaced_by_its_extension() -> None:
    body = task()
    del body["status"]
    body["_status"] = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    validate_resource(body, expected_type="Task")


def test_choice_value_given_only_as_extension_counts_as_present() -> None:
    body = task()
    del body["input"][1]["valueString"]
    body["input"][1]["_valueString"] = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "masked",
            }
        ]
    }
    validate_resource(body)


def test_null_in_a_primitive_array_is_allowed_when_its_extension_fills_the_slot() -> None:
    body = sample("Patient")
    ext = {"extension": [{"url": "http://example.org/initial", "valueBoolean": True}]}
    body["name"][0]["given"] = ["Jane", None]
    body["name"][0]["_given"] = [None, ext]
    validate_resource(body)
    body["name"][0]["_given"] = [None, None]
    found(rejected(body), "structure", "Patient.name[0].given[1]")


def test_translation_on_an_extension_value_is_accepted() -> None:
    # Valid R4 JSON that the R4B Extension model itself rejects (it has no _valueString).
    body = sample("CodeSystem")
    body["concept"][0]["extension"] = [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/codesystem-concept-comments",
            "_valueString": {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/translation",
                        "extension": [
                            {"url": "lang", "valueCode": "nl"},
                            {"url": "content", "valueString": "Niet aanwezig"},
                        ],
                    }
                ]
            },
        }
    ]
    validate_resource(body, expected_type="CodeSystem")


def test_code_with_a_no_break_space_matches_the_spec_regex() -> None:
    # The spec's \s is ASCII whitespace; U+00A0 inside a code is legal (official v2 examples).
    body = sample("CodeSystem")
    body["concept"][0]["code"] = "CHEST\u00a0"
    validate_resource(body)
    body["concept"][0]["code"] = "CHEST "
    found(rejected(body), "value", "CodeSystem.concept[0].code")


def test_reference_to_a_contained_resource_is_resolved() -> None:
    body = task()
    body["contained"] = [{"resourceType": "Patient", "id": "p1", "gender": "male"}]
    body["for"] = {"reference": "#p1"}
    validate_resource(body)
    body["encounter"] = {"reference": "#p1"}  # an encounter cannot be a Patient
    issue = found(rejected(body), "value", "Task.encounter.reference")
    assert "Patient" in issue.diagnostics
    del body["encounter"]
    body["owner"] = {"reference": "#nobody"}
    found(rejected(body), "value", "Task.owner.reference")


@pytest.mark.parametrize(
    "reference",
    [
        "Organization/otp-1",
        "Organization/otp-1/_history/2",
        "https://fhir.example.org/r4/Organization/otp-1",
        "urn:uuid:5f1c2d3e-0000-4000-8000-000000000001",
    ],
)
def test_reference_forms_accepted(reference: str) -> None:
    body = task()
    body["owner"] = {"reference": reference}
    validate_resource(body)


# --- the mutation table of fhir-libraries.md §1, and more --------------------------------------


def _set(path: str, value: Any) -> Mutation:
    """Set a value at a dotted path of JSON keys and list indexes ("input.0.valueString")."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _drop(key: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        del body[key]

    return mutate


TASK_MUTATIONS: list[tuple[str, Mutation, str, str]] = [
    # (name, mutation, issue code, expression)
    ("unknown element foo", _set("foo", 1), "structure", "Task.foo"),
    ('status "bogus"', _set("status", "bogus"), "code-invalid", "Task.status"),
    ('priority "whenever"', _set("priority", "whenever"), "code-invalid", "Task.priority"),
    ('intent "referral"', _set("intent", "referral"), "code-invalid", "Task.intent"),
    ('authoredOn "2024-13-45"', _set("authoredOn", "2024-13-45"), "value", "Task.authoredOn"),
    ('authoredOn "2024-02-30"', _set("authoredOn", "2024-02-30"), "value", "Task.authoredOn"),
    (
        "authoredOn time without zone",
        _set("authoredOn", "2024-05-02T10:15:00"),
        "value",
        "Task.authoredOn",
    ),
    ('authoredOn "yesterday"', _set("authoredOn", "yesterday"), "value", "Task.authoredOn"),
    ("status missing", _drop("status"), "required", "Task.status"),
    ("intent missing", _drop("intent"), "required", "Task.intent"),
    ("identifier [null]", _set("identifier", [None]), "structure", "Task.identifier[0]"),
    ('description ""', _set("description", ""), "value", "Task.description"),
    ("owner {} (ele-1)", _set("owner", {}), "structure", "Task.owner"),
    ("owner with only an id (ele-1)", _set("owner", {"id": "x"}), "structure", "Task.owner"),
    (
        'restriction.repetitions "1"',
        _set("restriction.repetitions", "1"),
        "structure",
        "Task.restriction.repetitions",
    ),
    (
        "restriction.repetitions 1.0",
        _set("restriction.repetitions", 1.0),
        "structure",
        "Task.restriction.repetitions",
    ),
    (
        "restriction.repetitions true",
        _set("restriction.repetitions", True),
        "structure",
        "Task.restriction.repetitions",
    ),
    (
        "restriction.repetitions 0",
        _set("restriction.repetitions", 0),
        "value",
        "Task.restriction.repetitions",
    ),
    (
        'input valueInteger "7"',
        _set("input.2.valueInteger", "7"),
        "structure",
        "Task.input[2].valueInteger",
    ),
    (
        "input[0] with two value[x]",
        _set("input.0.valueString", "also"),
        "structure",
        "Task.input[0].value[x]",
    ),
    (
        "input[0] without value[x]",
        lambda b: b["input"][0].pop("valueDateTime"),
        "required",
        "Task.input[0].value[x]",
    ),
    (
        "input[0].type missing",
        lambda b: b["input"][0].pop("type"),
        "required",
        "Task.input[0].type",
    ),
    (
        'owner.reference "not a ref"',
        _set("owner.reference", "not a ref"),
        "value",
        "Task.owner.reference",
    ),
    (
        "owner.reference to an unknown type",
        _set("owner.reference", "Gizmo/1"),
        "value",
        "Task.owner.reference",
    ),
    (
        "encounter pointing to a Patient",
        _set("encounter", {"reference": "Patient/p-123"}),
        "value",
        "Task.encounter.reference",
    ),
    ("description a number", _set("description", 5), "structure", "Task.description"),
    ("description null", _set("description", None), "structure", "Task.description"),
    ("status an array", _set("status", ["requested"]), "structure", "Task.status"),
    ("identifier an object", _set("identifier", {"value": "x"}), "structure", "Task.identifier"),
    ("basedOn []", _set("basedOn", []), "structure", "Task.basedOn"),
    ("owner a string", _set("owner", "Organization/otp-1"), "structure", "Task.owner"),
    (
        'identifier[0].system ""',
        _set("identifier.0.system", ""),
        "value",
        "Task.identifier[0].system",
    ),
    (
        'identifier[0].use "primary"',
        _set("identifier.0.use", "primary"),
        "code-invalid",
        "Task.identifier[0].use",
    ),
    ('note[0].text ""', _set("note.0.text", ""), "value", "Task.note[0].text"),
    ("id with a space", _set("id", "bad id"), "value", "Task.id"),
    (
        "meta.lastUpdated without zone",
        _set("meta.lastUpdated", "2024-05-02T10:15:30"),
        "value",
        "Task.meta.lastUpdated",
    ),
    (
        "nested unknown element",
        _set("restriction.period.foo", 1),
        "structure",
        "Task.restriction.period.foo",
    ),
    ("_status {}", _set("_status", {}), "structure", "Task.status"),
    ("implicitRules a boolean", _set("implicitRules", True), "structure", "Task.implicitRules"),
    (
        "extension without url",
        _set("extension", [{"valueString": "x"}]),
        "required",
        "Task.extension[0].url",
    ),
    (
        "extension with value and extensions (ext-1)",
        _set(
            "extension",
            [
                {
                    "url": "http://example.org/a",
                    "valueString": "x",
                    "extension": [{"url": "b", "valueBoolean": True}],
                }
            ],
        ),
        "invalid",
        "Task.extension[0]",
    ),
    (
        "extension with neither value nor extensions (ext-1)",
        _set("extension", [{"url": "http://example.org/a"}]),
        "invalid",
        "Task.extension[0]",
    ),
    (
        "R4B-only Extension.valueRatioRange",
        _set(
            "extension",
            [{"url": "http://example.org/a", "valueRatioRange": {"lowNumerator": {"value": 1}}}],
        ),
        "structure",
        "Task.extension[0].valueRatioRange",
    ),
    (
        "contained resource without resourceType",
        _set("contained", [{"id": "a"}]),
        "required",
        "Task.contained[0].resourceType",
    ),
    (
        "contained resource of an unknown type",
        _set("contained", [{"resourceType": "Gizmo", "id": "a"}]),
        "value",
        "Task.contained[0].resourceType",
    ),
    (
        "contained Patient with a bad gender",
        _set("contained", [{"resourceType": "Patient", "id": "a", "gender": "m"}]),
        "code-invalid",
        "Task.contained[0].gender",
    ),
    (
        "contained Patient with an unknown element",
        _set("contained", [{"resourceType": "Patient", "id": "a", "sex": "male"}]),
        "structure",
        "Task.contained[0].sex",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "code", "expression"),
    [pytest.param(m, c, e, id=name) for name, m, c, e in TASK_MUTATIONS],
)
def test_invalid_task_is_rejected(mutation: Mutation, code: str, expression: str) -> None:
    body = task()
    mutation(body)
    issue = found(rejected(body, expected_type="Task"), code, expression)
    assert issue.severity == "error"
    assert issue.diagnostics.startswith(f"{expression}: ")


def test_bad_status_names_the_allowed_codes() -> None:
    body = task()
    body["status"] = "bogus"
    [issue] = rejected(body)
    assert issue.diagnostics == (
        "Task.status: 'bogus' is not a valid code; allowed: draft, requested, received, "
        "accepted, rejected, ready, cancelled, in-progress, on-hold, failed, completed, "
        "entered-in-error"
    )


def test_unknown_element_suggests_the_likely_name() -> None:
    body = task()
    body["authoredon"] = body.pop("authoredOn")
    [issue] = rejected(body)
    assert issue.diagnostics == "Task.authoredon: unknown element; did you mean 'authoredOn'?"


def test_string_for_a_number_says_what_fhir_json_wants() -> None:
    body = task()
    body["restriction"]["repetitions"] = "1"
    [issue] = rejected(body)
    assert "positiveInt must be a JSON number" in issue.diagnostics
    assert "'1'" in issue.diagnostics


OTHER_MUTATIONS: list[tuple[str, str, Mutation, str, str]] = [
    # (name, resource type, mutation, issue code, expression)
    ("Patient.gender F", "Patient", _set("gender", "F"), "code-invalid", "Patient.gender"),
    (
        "Patient.contact.gender",
        "Patient",
        _set("contact.0.gender", "woman"),
        "code-invalid",
        "Patient.contact[0].gender",
    ),
    (
        "HumanName.use",
        "Patient",
        _set("name.0.use", "legal"),
        "code-invalid",
        "Patient.name[0].use",
    ),
    (
        "ContactPoint.system",
        "Patient",
        _set("telecom.0.system", "mobile"),
        "code-invalid",
        "Patient.telecom[0].system",
    ),
    (
        "Address.type",
        "Patient",
        _set("address.0.type", "mailing"),
        "code-invalid",
        "Patient.address[0].type",
    ),
    ("birthDate bad", "Patient", _set("birthDate", "1990-4-1"), "value", "Patient.birthDate"),
    (
        "ServiceRequest.intent",
        "ServiceRequest",
        _set("intent", "referral"),
        "code-invalid",
        "ServiceRequest.intent",
    ),
    (
        "ServiceRequest.status",
        "ServiceRequest",
        _set("status", "requested"),
        "code-invalid",
        "ServiceRequest.status",
    ),
    (
        "QuestionnaireResponse.status",
        "QuestionnaireResponse",
        _set("status", "done"),
        "code-invalid",
        "QuestionnaireResponse.status",
    ),
    (
        "QuestionnaireResponse answer integer as string",
        "QuestionnaireResponse",
        _set("item.1.item.0.answer.0.valueInteger", "0"),
        "structure",
        "QuestionnaireResponse.item[1].item[0].answer[0].valueInteger",
    ),
    (
        "QuestionnaireResponse answer boolean as string",
        "QuestionnaireResponse",
        _set("item.0.answer.0.valueBoolean", "false"),
        "structure",
        "QuestionnaireResponse.item[0].answer[0].valueBoolean",
    ),
    (
        "Questionnaire.item.type abstract 'question'",
        "Questionnaire",
        _set("item.0.type", "question"),
        "code-invalid",
        "Questionnaire.item[0].type",
    ),
    (
        "Questionnaire nested item type",
        "Questionnaire",
        _set("item.2.item.0.type", "number"),
        "code-invalid",
        "Questionnaire.item[2].item[0].type",
    ),
    (
        "Questionnaire nested item without linkId",
        "Questionnaire",
        lambda b: b["item"][2]["item"][0].pop("linkId"),
        "required",
        "Questionnaire.item[2].item[0].linkId",
    ),
    (
        "Questionnaire.item.enableWhen.operator",
        "Questionnaire",
        _set("item.1.enableWhen.0.operator", "=="),
        "code-invalid",
        "Questionnaire.item[1].enableWhen[0].operator",
    ),
    (
        "Questionnaire.item.enableBehavior",
        "Questionnaire",
        _set("item.1.enableBehavior", "every"),
        "code-invalid",
        "Questionnaire.item[1].enableBehavior",
    ),
    (
        "Questionnaire.status",
        "Questionnaire",
        _set("status", "published"),
        "code-invalid",
        "Questionnaire.status",
    ),
    (
        "Questionnaire.subjectType",
        "Questionnaire",
        _set("subjectType", ["Person2"]),
        "code-invalid",
        "Questionnaire.subjectType[0]",
    ),
    (
        "Observation.status",
        "Observation",
        _set("status", "done"),
        "code-invalid",
        "Observation.status",
    ),
    (
        "Quantity.comparator",
        "Observation",
        _set("valueQuantity.comparator", "="),
        "code-invalid",
        "Observation.valueQuantity.comparator",
    ),
    (
        "Quantity.value as string",
        "Observation",
        _set("valueQuantity.value", "7.5"),
        "structure",
        "Observation.valueQuantity.value",
    ),
    (
        "Observation.subject to a Practitioner",
        "Observation",
        _set("subject", {"reference": "Practitioner/x"}),
        "value",
        "Observation.subject.reference",
    ),
    ("Consent.status", "Consent", _set("status", "signed"), "code-invalid", "Consent.status"),
    (
        "Consent.provision.type",
        "Consent",
        _set("provision.type", "allow"),
        "code-invalid",
        "Consent.provision.type",
    ),
    (
        "Consent.provision.data.meaning",
        "Consent",
        _set("provision.data.0.meaning", "all"),
        "code-invalid",
        "Consent.provision.data[0].meaning",
    ),
    (
        "Procedure.status",
        "Procedure",
        _set("status", "done"),
        "code-invalid",
        "Procedure.status",
    ),
    (
        "AuditEvent.action",
        "AuditEvent",
        _set("action", "X"),
        "code-invalid",
        "AuditEvent.action",
    ),
    (
        "AuditEvent.outcome",
        "AuditEvent",
        _set("outcome", "1"),
        "code-invalid",
        "AuditEvent.outcome",
    ),
    (
        "CodeSystem.content",
        "CodeSystem",
        _set("content", "all"),
        "code-invalid",
        "CodeSystem.content",
    ),
    (
        "ValueSet.compose.include.filter.op",
        "ValueSet",
        _set("compose.include.0.filter.0.op", "like"),
        "code-invalid",
        "ValueSet.compose.include[0].filter[0].op",
    ),
    (
        "ValueSet.compose.exclude.filter.op (content reference)",
        "ValueSet",
        _set("compose.exclude.0.filter.0.op", "like"),
        "code-invalid",
        "ValueSet.compose.exclude[0].filter[0].op",
    ),
    (
        "MedicationDispense.status",
        "MedicationDispense",
        _set("status", "dispensed"),
        "code-invalid",
        "MedicationDispense.status",
    ),
    (
        "Timing.repeat.periodUnit",
        "MedicationDispense",
        _set("dosageInstruction.0.timing.repeat.periodUnit", "minute"),
        "code-invalid",
        "MedicationDispense.dosageInstruction[0].timing.repeat.periodUnit",
    ),
    (
        "Medication.status",
        "Medication",
        _set("status", "available"),
        "code-invalid",
        "Medication.status",
    ),
    (
        "SupplyDelivery.status",
        "SupplyDelivery",
        _set("status", "delivered"),
        "code-invalid",
        "SupplyDelivery.status",
    ),
    (
        "Location.status",
        "Location",
        _set("status", "open"),
        "code-invalid",
        "Location.status",
    ),
    ("Location.mode", "Location", _set("mode", "any"), "code-invalid", "Location.mode"),
    (
        "Location.position.latitude as string",
        "Location",
        _set("position.latitude", "39.78"),
        "structure",
        "Location.position.latitude",
    ),
    (
        "Location.hoursOfOperation.daysOfWeek",
        "Location",
        _set("hoursOfOperation.0.daysOfWeek", ["friday"]),
        "code-invalid",
        "Location.hoursOfOperation[0].daysOfWeek[0]",
    ),
    (
        "PractitionerRole.availableTime.daysOfWeek",
        "PractitionerRole",
        _set("availableTime.0.daysOfWeek", ["mon", "Tue"]),
        "code-invalid",
        "PractitionerRole.availableTime[0].daysOfWeek[1]",
    ),
    (
        "HealthcareService.availableTime.allDay as string",
        "HealthcareService",
        _set("availableTime.0.allDay", "true"),
        "structure",
        "HealthcareService.availableTime[0].allDay",
    ),
    (
        "RelatedPerson.gender",
        "RelatedPerson",
        _set("gender", "sister"),
        "code-invalid",
        "RelatedPerson.gender",
    ),
    (
        "Practitioner.gender",
        "Practitioner",
        _set("gender", "M"),
        "code-invalid",
        "Practitioner.gender",
    ),
    (
        "Narrative.status",
        "Organization",
        _set(
            "text", {"status": "done", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}
        ),
        "code-invalid",
        "Organization.text.status",
    ),
    (
        "Organization.active as string",
        "Organization",
        _set("active", "true"),
        "structure",
        "Organization.active",
    ),
]


@pytest.mark.parametrize(
    ("resource_type", "mutation", "code", "expression"),
    [pytest.param(t, m, c, e, id=name) for name, t, m, c, e in OTHER_MUTATIONS],
)
def test_invalid_resource_of_other_types_is_rejected(
    resource_type: str, mutation: Mutation, code: str, expression: str
) -> None:
    body = sample(resource_type)
    mutation(body)
    found(rejected(body, expected_type=resource_type), code, expression)


# --- the body as a whole -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [[], [task()], "Task", 1, 1.5, True, None], ids=repr)
def test_non_object_json_is_rejected(body: Any) -> None:
    [issue] = rejected(body, expected_type="Task")
    assert issue.code == "structure"
    assert "JSON object" in issue.diagnostics


def test_missing_resource_type_is_rejected() -> None:
    body = task()
    del body["resourceType"]
    [issue] = rejected(body)
    assert (issue.code, issue.expression) == ("required", ("resourceType",))


def test_missing_resource_type_with_expected_type_still_reports_the_rest() -> None:
    body = task()
    del body["resourceType"]
    body["status"] = "bogus"
    issues = rejected(body, expected_type="Task")
    found(issues, "required", "resourceType")
    found(issues, "code-invalid", "Task.status")


def test_non_string_resource_type_is_rejected() -> None:
    body = task()
    body["resourceType"] = {"name": "Task"}
    [issue] = rejected(body)
    assert issue.code == "structure"


def test_resource_type_that_differs_from_expected_is_rejected() -> None:
    body = task()
    body["resourceType"] = "Patient"
    [issue] = rejected(body, expected_type="Task")
    assert issue.code == "invalid"
    assert issue.expression == ("resourceType",)
    assert "'Patient'" in issue.diagnostics and "'Task'" in issue.diagnostics


def test_unknown_resource_type_is_rejected() -> None:
    body = task()
    body["resourceType"] = "Gizmo"
    [issue] = rejected(body)
    assert issue.code == "value"


@pytest.mark.parametrize("resource_type", ["Bundle", "EpisodeOfCare", "OperationOutcome"])
def test_resource_types_the_server_does_not_store_are_rejected(resource_type: str) -> None:
    [issue] = rejected({"resourceType": resource_type})
    assert issue.code == "not-supported"
    [issue] = rejected({"resourceType": resource_type}, expected_type=resource_type)
    assert issue.code == "not-supported"


def test_many_problems_are_reported_at_once() -> None:
    body = task()
    body["foo"] = 1
    body["status"] = "bogus"
    body["priority"] = "whenever"
    body["authoredOn"] = "2024-13-45"
    body["description"] = ""
    body["owner"] = {}
    body["identifier"] = [None]
    body["restriction"]["repetitions"] = "1"
    body["input"][0]["valueString"] = "second value"
    body["input"][1]["valueString"] = 5
    del body["intent"]
    issues = rejected(body, expected_type="Task")
    expected = {
        ("structure", "Task.foo"),
        ("code-invalid", "Task.status"),
        ("code-invalid", "Task.priority"),
        ("value", "Task.authoredOn"),
        ("value", "Task.description"),
        ("structure", "Task.owner"),
        ("structure", "Task.identifier[0]"),
        ("structure", "Task.restriction.repetitions"),
        ("structure", "Task.input[0].value[x]"),
        ("structure", "Task.input[1].valueString"),
        ("required", "Task.intent"),
    }
    got = {(i.code, i.expression[0]) for i in issues}
    assert expected <= got
    assert len(issues) == len(expected), "each problem is reported once"


def test_problems_in_sibling_objects_are_all_reported() -> None:
    # pydantic skips a model's required-element check once a field of it failed; the walk does not
    body = sample("Questionnaire")
    body["item"][0]["foo"] = True
    del body["item"][0]["linkId"]
    body["item"][2]["item"][0]["type"] = "number"
    issues = rejected(body)
    found(issues, "structure", "Questionnaire.item[0].foo")
    found(issues, "required", "Questionnaire.item[0].linkId")
    found(issues, "code-invalid", "Questionnaire.item[2].item[0].type")


def test_error_message_summarises_the_issues() -> None:
    body = task()
    body["status"] = "bogus"
    body["priority"] = "whenever"
    with pytest.raises(InvalidResourceError) as info:
        validate_resource(body)
    assert info.value.diagnostics == "Invalid resource: 2 problems in the resource"
    assert info.value.issue_code == "structure"


@pytest.mark.parametrize("data", ["%%%", "abc", "a%bc", "iVBORw0KGgo=!"])
def test_base64binary_must_be_base64(data: str) -> None:
    # pydantic's decoder skips characters outside the alphabet: "%%%" passed as empty content.
    body = {"resourceType": "Patient", "photo": [{"contentType": "image/png", "data": data}]}
    with pytest.raises(InvalidResourceError) as info:
        validate_resource(body, expected_type="Patient")
    [issue] = info.value.issues
    assert issue.expression == ("Patient.photo[0].data",) and "base64" in issue.diagnostics


@pytest.mark.parametrize("data", ["iVBORw0KGgo=", "iVBO Rw0K\nGgo=", "AAAA"])
def test_base64binary_accepts_base64_with_whitespace(data: str) -> None:
    body = {"resourceType": "Patient", "photo": [{"contentType": "image/png", "data": data}]}
    validate_resource(body, expected_type="Patient")


@pytest.mark.parametrize(
    ("rtype", "element", "value", "where"),
    [
        ("Questionnaire", "url", "https://example.org/q one", "Questionnaire.url"),
        (
            "QuestionnaireResponse",
            "questionnaire",
            "http://x y",
            "QuestionnaireResponse.questionnaire",
        ),
    ],
)
def test_uri_types_have_no_whitespace(rtype: str, element: str, value: str, where: str) -> None:
    body = copy.deepcopy(sample(rtype)) | {element: value}
    issue = found(rejected(body, expected_type=rtype), "value", where)
    assert "no spaces" in issue.diagnostics
    identifier = copy.deepcopy(sample("Patient")) | {
        "identifier": [{"system": "urn:a b", "value": "1"}]
    }
    found(rejected(identifier, expected_type="Patient"), "value", "Patient.identifier[0].system")


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "JavaScript:alert(1)", "vbscript:x", "data:text/html,<b>x"]
)
def test_attachment_urls_may_not_be_scripts(url: str) -> None:
    # A receiving EHR shows Attachment.url as a link: a script URL there is stored XSS.
    body = copy.deepcopy(sample("Patient")) | {"photo": [{"contentType": "image/png", "url": url}]}
    issue = found(rejected(body, expected_type="Patient"), "value", "Patient.photo[0].url")
    assert "script" in issue.diagnostics


@pytest.mark.parametrize(
    "url", ["https://example.org/photo.png", "data:image/png;base64,iVBORw0KGgo=", "urn:uuid:1"]
)
def test_attachment_urls_that_are_not_scripts_pass(url: str) -> None:
    body = copy.deepcopy(sample("Patient")) | {"photo": [{"contentType": "image/png", "url": url}]}
    validate_resource(body, expected_type="Patient")


@pytest.mark.parametrize(
    ("start", "end", "reversed_"),
    [
        ("2024-05-02", "2024-05-01", True),
        ("2024-05", "2024-04", True),
        ("2024-05-02T10:00:00Z", "2024-05-02T09:59:00Z", True),
        ("2024-05-02T10:00:00-05:00", "2024-05-02T14:00:00Z", True),  # 15:00Z > 14:00Z
        ("2024-05-02", "2024-05-02", False),
        ("2024-05-02T10:00:00Z", "2024-05-02T10:00:00Z", False),
        # A date against a time is undecided in FHIRPath: not refused.
        ("2024-05-02T23:00:00-05:00", "2024-05-02", False),
        ("2024-05", "2024-05-01", False),
    ],
)
def test_a_period_may_not_end_before_it_starts(start: str, end: str, reversed_: bool) -> None:
    body = copy.deepcopy(sample("Task"))
    body["restriction"] = {"period": {"start": start, "end": end}}
    if reversed_:
        issue = found(rejected(body, expected_type="Task"), "invariant", "Task.restriction.period")
        assert "per-1" in issue.diagnostics
    else:
        validate_resource(body, expected_type="Task")
