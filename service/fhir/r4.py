"""TEMPORARY stand-in until the validation branch lands (replaced wholesale)."""

SUPPORTED_TYPES = (
    "Patient",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "HealthcareService",
    "Location",
    "Questionnaire",
    "QuestionnaireResponse",
    "Observation",
    "ServiceRequest",
    "Task",
    "Procedure",
    "Consent",
    "AuditEvent",
    "CodeSystem",
    "ValueSet",
    "MedicationDispense",
    "Medication",
    "SupplyDelivery",
    "RelatedPerson",
)
