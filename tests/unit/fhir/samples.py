"""Valid R4 resources of every supported type, as a client would send them (plain JSON dicts).

Each call returns a fresh copy, so tests can mutate what they get.
"""

from __future__ import annotations

import copy
from typing import Any

_TASK: dict[str, Any] = {
    "resourceType": "Task",
    "id": "handoff-task-1",
    "meta": {"versionId": "1", "lastUpdated": "2024-05-02T10:15:30.123+00:00"},
    "identifier": [
        {"use": "official", "system": "urn:oid:2.16.840.1.113883.3.1", "value": "REF-2024-0001"}
    ],
    "basedOn": [{"reference": "ServiceRequest/referral-1"}],
    "groupIdentifier": {
        "system": "urn:ietf:rfc:3986",
        "value": "urn:uuid:5f1c2d3e-0000-4000-8000-000000000001",
    },
    "status": "requested",
    "businessStatus": {"text": "Awaiting community provider acceptance"},
    "intent": "order",
    "priority": "urgent",
    "code": {
        "coding": [
            {
                "system": "http://hl7.org/fhir/CodeSystem/task-code",
                "code": "fulfill",
                "display": "Fulfill the focal request",
            }
        ]
    },
    "description": "Warm handoff from county jail to community opioid treatment program",
    "focus": {"reference": "ServiceRequest/referral-1"},
    "for": {"reference": "Patient/p-123", "display": "Example Person"},
    "authoredOn": "2024-05-02T10:15:00+00:00",
    "lastModified": "2024-05-02T10:15:00Z",
    "requester": {"reference": "Organization/county-jail", "display": "County Jail Health"},
    "performerType": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/task-performer-type",
                    "code": "performer",
                }
            ]
        }
    ],
    "owner": {"reference": "Organization/otp-1", "display": "Community OTP"},
    "reasonCode": {"text": "Opioid use disorder; high overdose risk after release"},
    "note": [
        {
            "authorString": "Release coordinator",
            "time": "2024-05-02T10:16:00Z",
            "text": "Release expected 2024-05-03 08:00; client consents to contact.",
        }
    ],
    "restriction": {
        "repetitions": 1,
        "period": {"start": "2024-05-02T10:15:00Z", "end": "2024-05-09T10:15:00Z"},
        "recipient": [{"reference": "Organization/otp-1"}],
    },
    "input": [
        {"type": {"text": "release-date"}, "valueDateTime": "2024-05-03T08:00:00-05:00"},
        {"type": {"text": "contact-phone"}, "valueString": "+1 555 0100"},
        {"type": {"text": "risk-score"}, "valueInteger": 7},
    ],
    "output": [
        {"type": {"text": "appointment"}, "valueReference": {"reference": "Appointment/a1"}}
    ],
}

_OTHERS: dict[str, dict[str, Any]] = {
    "Patient": {
        "resourceType": "Patient",
        "id": "p-123",
        "identifier": [{"use": "usual", "system": "urn:oid:2.16.840.1.113883.4.1", "value": "1"}],
        "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]}],
        "gender": "female",
        "birthDate": "1990-04-01",
        "telecom": [{"system": "phone", "value": "+1 555 0100", "use": "mobile"}],
        "address": [{"use": "home", "type": "physical", "city": "Springfield", "state": "IL"}],
        "contact": [{"name": {"text": "Ann Doe"}, "gender": "female"}],
    },
    "Organization": {
        "resourceType": "Organization",
        "id": "otp-1",
        "active": True,
        "name": "Community OTP",
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                    }
                ]
            }
        ],
        "telecom": [{"system": "url", "value": "https://otp.example.org"}],
    },
    "Practitioner": {
        "resourceType": "Practitioner",
        "name": [{"family": "Smith", "prefix": ["Dr."]}],
        "gender": "male",
    },
    "PractitionerRole": {
        "resourceType": "PractitionerRole",
        "practitioner": {"reference": "Practitioner/pr1"},
        "organization": {"reference": "Organization/otp-1"},
        "availableTime": [
            {
                "daysOfWeek": ["mon", "tue"],
                "availableStartTime": "08:00:00",
                "availableEndTime": "17:00:00",
            }
        ],
    },
    "HealthcareService": {
        "resourceType": "HealthcareService",
        "providedBy": {"reference": "Organization/otp-1"},
        "name": "MOUD intake",
        "availableTime": [{"daysOfWeek": ["wed"], "allDay": True}],
    },
    "Location": {
        "resourceType": "Location",
        "status": "active",
        "mode": "instance",
        "name": "Clinic",
        "position": {"longitude": -89.65, "latitude": 39.78},
        "hoursOfOperation": [{"daysOfWeek": ["fri"], "openingTime": "09:00:00"}],
    },
    "Questionnaire": {
        "resourceType": "Questionnaire",
        "url": "http://example.org/Questionnaire/tapi",
        "status": "active",
        "subjectType": ["Patient"],
        "item": [
            {"linkId": "1", "text": "Used opioids in the past 12 months?", "type": "boolean"},
            {
                "linkId": "2",
                "text": "How often?",
                "type": "choice",
                "enableWhen": [{"question": "1", "operator": "=", "answerBoolean": True}],
                "enableBehavior": "all",
                "answerOption": [{"valueCoding": {"code": "never"}}],
            },
            {
                "linkId": "3",
                "type": "group",
                "text": "Score",
                "item": [{"linkId": "3.1", "type": "integer", "text": "Total"}],
            },
        ],
    },
    "QuestionnaireResponse": {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/Questionnaire/tapi",
        "status": "completed",
        "subject": {"reference": "Patient/p-123"},
        "authored": "2024-05-02T10:00:00Z",
        "item": [
            {"linkId": "1", "answer": [{"valueBoolean": False}]},
            {"linkId": "3", "item": [{"linkId": "3.1", "answer": [{"valueInteger": 0}]}]},
        ],
    },
    "Observation": {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "75626-2"}]},
        "subject": {"reference": "Patient/p-123"},
        "effectiveDateTime": "2024-05-02",
        "valueQuantity": {
            "value": 7.5,
            "comparator": "<",
            "unit": "score",
            "system": "http://unitsofmeasure.org",
            "code": "{score}",
        },
    },
    "ServiceRequest": {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "subject": {"reference": "Patient/p-123"},
        "code": {"text": "MOUD referral"},
        "authoredOn": "2024-05-02T10:15:00-05:00",
        "requester": {"reference": "Organization/county-jail"},
        "performer": [{"reference": "Organization/otp-1"}],
    },
    "Procedure": {
        "resourceType": "Procedure",
        "status": "completed",
        "subject": {"reference": "Patient/p-123"},
        "code": {"text": "Naloxone training"},
        "performedPeriod": {"start": "2024-05-01T09:00:00Z", "end": "2024-05-01T09:30:00Z"},
    },
    "Consent": {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p-123"},
        "dateTime": "2024-05-02T10:00:00Z",
        "policyRule": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentpolicycodes",
                    "code": "cfr42",
                }
            ]
        },
        "provision": {
            "type": "permit",
            "period": {"start": "2024-05-02", "end": "2025-05-02"},
            "data": [
                {"meaning": "related", "reference": {"reference": "ServiceRequest/referral-1"}}
            ],
        },
    },
    "AuditEvent": {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "action": "C",
        "recorded": "2024-05-02T10:15:30.123+00:00",
        "outcome": "0",
        "agent": [
            {
                "who": {"reference": "Organization/county-jail"},
                "requestor": True,
                "network": {"address": "127.0.0.1", "type": "2"},
            }
        ],
        "source": {"observer": {"reference": "Organization/otp-1"}},
        "entity": [{"what": {"reference": "Task/handoff-task-1"}}],
    },
    "CodeSystem": {
        "resourceType": "CodeSystem",
        "url": "http://example.org/CodeSystem/handoff-status",
        "status": "draft",
        "content": "complete",
        "concept": [{"code": "a", "display": "A", "concept": [{"code": "a1"}]}],
    },
    "ValueSet": {
        "resourceType": "ValueSet",
        "url": "http://example.org/ValueSet/x",
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": "http://loinc.org",
                    "filter": [{"property": "SCALE_TYP", "op": "=", "value": "DOC"}],
                }
            ],
            "exclude": [
                {
                    "system": "http://loinc.org",
                    "filter": [{"property": "CLASS", "op": "is-a", "value": "X"}],
                }
            ],
        },
    },
    "MedicationDispense": {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {"text": "Naloxone 4 mg nasal spray"},
        "subject": {"reference": "Patient/p-123"},
        "quantity": {"value": 2, "unit": "spray"},
        "whenHandedOver": "2024-05-03T08:05:00-05:00",
        "dosageInstruction": [
            {
                "text": "1 spray in one nostril; repeat after 2 minutes if needed",
                "timing": {"repeat": {"frequency": 1, "period": 2, "periodUnit": "min"}},
            }
        ],
    },
    "Medication": {
        "resourceType": "Medication",
        "status": "active",
        "code": {"text": "Buprenorphine"},
        "ingredient": [
            {
                "itemCodeableConcept": {"text": "buprenorphine"},
                "strength": {
                    "numerator": {"value": 8, "unit": "mg"},
                    "denominator": {"value": 1, "unit": "tablet"},
                },
            }
        ],
    },
    "SupplyDelivery": {
        "resourceType": "SupplyDelivery",
        "status": "completed",
        "patient": {"reference": "Patient/p-123"},
        "suppliedItem": {"quantity": {"value": 1}, "itemCodeableConcept": {"text": "Naloxone kit"}},
        "occurrenceDateTime": "2024-05-03",
    },
    "RelatedPerson": {
        "resourceType": "RelatedPerson",
        "patient": {"reference": "Patient/p-123"},
        "relationship": [{"text": "sister"}],
        "gender": "female",
        "telecom": [{"system": "sms", "value": "+1 555 0101"}],
    },
    "Subscription": {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Referrals for Harbor OTP",
        "criteria": "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task",
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://harbor.example.org/notifications",
            "payload": "application/fhir+json",
        },
    },
    "Encounter": {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {
            "system": "https://handoff.dev/fhir/CodeSystem/custody-encounter",
            "code": "custody-stay",
        },
        "subject": {"reference": "Patient/p-123"},
        "period": {"start": "2024-05-01T22:15:00-05:00", "end": "2024-05-03T16:40:00-05:00"},
        "location": [{"location": {"display": "County Jail"}, "status": "completed"}],
        "hospitalization": {"dischargeDisposition": {"text": "Released on bail"}},
    },
    "Appointment": {
        "resourceType": "Appointment",
        "status": "booked",
        "basedOn": [{"reference": "ServiceRequest/sr-1"}],
        "start": "2024-05-04T09:00:00-05:00",
        "end": "2024-05-04T10:00:00-05:00",
        "participant": [
            {"actor": {"reference": "Patient/p-123"}, "status": "accepted"},
            {"actor": {"reference": "Location/site-1"}, "status": "accepted"},
        ],
    },
    "Communication": {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": "Patient/p-123"},
        "medium": [{"text": "Phone call"}],
        "sent": "2024-05-04T09:00:00-05:00",
        "payload": [{"contentString": "Has naloxone; ride to the OTP on Thursday"}],
    },
    "PlanDefinition": {
        "resourceType": "PlanDefinition",
        "status": "active",
        "url": "https://peer.example.org/fhir/PlanDefinition/follow-up",
        "action": [
            {
                "id": "call",
                "title": "Call within 12 hours",
                "timingDuration": {
                    "value": 12,
                    "unit": "h",
                    "system": "http://unitsofmeasure.org",
                    "code": "h",
                },
            }
        ],
    },
}


def task() -> dict[str, Any]:
    """A valid ~2 KB R4 Task (a warm-handoff referral)."""
    return copy.deepcopy(_TASK)


def sample(resource_type: str) -> dict[str, Any]:
    if resource_type == "Task":
        return task()
    return copy.deepcopy(_OTHERS[resource_type])


def sample_types() -> tuple[str, ...]:
    return ("Task", *_OTHERS)
