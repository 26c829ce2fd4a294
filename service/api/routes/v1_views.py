"""Response models of the JMS API's referral views (/v1/referrals): what Swagger UI and the
OpenAPI contract show for each answer. The views are built by service.features.referrals;
tests/api/test_documented_examples.py validates real answers against these models (extra
fields forbidden), so the contract cannot drift from what the service sends."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_EXAMPLE_ID = "5b0e6a0c9d2f4e7a8c1b3d5f7a9c0e2b"
_EXAMPLE_TASK = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


class Coded(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str | None = Field(None, description="Code (e.g. a warm-handoff milestone)")
    display: str | None = None


class TaskSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str
    owner: str | None = Field(description="Organization/<id> asked to act")
    status: str | None = Field(description="FHIR Task.status")


class ReleaseView(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expected_at: str | None = Field(description="Expected release (ISO 8601, with zone)")
    window_end: str | None = None
    location: str | None = None
    released_at: str | None = Field(
        None, description="The recorded release (from the custody stay), once it happened"
    )
    planned: bool | None = Field(
        None, description="Whether the recorded release was planned (None until released)"
    )


class OutcomeView(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str | None = Field(description="What the provider recorded (e.g. activity)")
    reference: str | None = Field(None, description="A resource the outcome names")
    activity: str | None = Field(None, description="An activity code (e.g. met-at-release)")


class ReferralLinks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    self: str = Field(description="This view")
    service_request: str = Field(description="The FHIR ServiceRequest")
    task: str | None = Field(description="The current FHIR Task")


class TimelineEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: str = Field(description="When the Task changed, or the person was released (ISO 8601)")
    event: Literal["task", "released"] = Field(
        "task", description="task: a Task version; released: the custody stay's recorded release"
    )
    task_id: str | None = Field(description="The Task (None for a release)")
    version: int
    status: str | None
    business_status: Coded | None = Field(description="Milestone, if any")
    reason: str | None = Field(description="Status reason text")
    owner: str | None
    by: str | None = Field(description="Organization/<id> that made the change")
    occurred_at: str | None = Field(
        None,
        description="When the milestone happened, where that is not when it was recorded "
        "(first-appointment-attended: the appointment's start; released: the release)",
    )


class AppointmentView(BaseModel):
    """An appointment booked for a referral. Without the receiving organization's consent
    (42 CFR Part 2) others see only that one is scheduled: `details_withheld` true, and no
    date, time, place or practitioner (attended or missed shows as booked)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "appointment_id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
                "referral_id": _EXAMPLE_ID,
                "status": "booked",
                "start": "2030-06-02T09:00:00-05:00",  # calendar: fixed (Swagger example)
                "end": "2030-06-02T10:00:00-05:00",  # calendar: fixed (Swagger example)
                "location": "Location/demo-otp-site",
                "location_name": "Harbor Opioid Treatment Program, Main St",
                "practitioner": None,
                "description": "Intake and first buprenorphine dose",
                "cancellation_reason": None,
                "details_withheld": False,
            }
        },
    )
    appointment_id: str | None
    referral_id: str | None = Field(description="The referral (ServiceRequest id) it is for")
    status: str | None = Field(
        description="FHIR Appointment.status: booked, fulfilled (attended), noshow, cancelled"
    )
    start: str | None
    end: str | None
    location: str | None = Field(description="Location/<id>")
    location_name: str | None
    practitioner: str | None = Field(description="Practitioner/<id> or PractitionerRole/<id>")
    description: str | None
    cancellation_reason: str | None = Field(description="Why cancelled or missed, if given")
    details_withheld: bool = Field(
        description="True: no consent of the receiving organization lets you see the details"
    )


class PersonSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family_name: str | None
    given_names: list[str]
    booking_number: str | None = Field(description="As the caller's organization recorded it")


class ReferralView(BaseModel):
    """A referral as the referring organization sees it (what its consents let it see)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "referral_id": _EXAMPLE_ID,
                "jms_referral_id": "JMS-REF-2026-1187",
                "patient_id": "3c4d5e6f708192a3b4c5d6e7f8091a2b",
                "service_request_status": "active",
                "status": "requested",
                "business_status": None,
                "status_reason": None,
                "owner": "Organization/demo-otp",
                "task_id": _EXAMPLE_TASK,
                "tasks": [
                    {
                        "task_id": _EXAMPLE_TASK,
                        "owner": "Organization/demo-otp",
                        "status": "requested",
                    }
                ],
                "services": ["moud-buprenorphine", "peer-support"],
                "priority": "urgent",
                "facility": "Location/demo-county-jail-site",
                "facility_name": "Riverbend County Jail main site",
                "intercept": 4,
                "release": {
                    "expected_at": "2030-06-01T13:00:00Z",  # calendar: fixed (Swagger example)
                    "window_end": None,
                    "location": "Main gate, 100 Main St",
                    "released_at": None,
                    "planned": None,
                },
                "custody_stay": None,
                "outcomes": [],
                "links": {
                    "self": f"http://127.0.0.1:8000/v1/referrals/{_EXAMPLE_ID}",
                    "service_request": f"http://127.0.0.1:8000/fhir/ServiceRequest/{_EXAMPLE_ID}",
                    "task": f"http://127.0.0.1:8000/fhir/Task/{_EXAMPLE_TASK}",
                },
                "timeline": [
                    {
                        "at": "2026-11-26T14:30:00Z",  # calendar: fixed (Swagger example)
                        "event": "task",
                        "task_id": _EXAMPLE_TASK,
                        "version": 1,
                        "status": "requested",
                        "business_status": None,
                        "reason": None,
                        "owner": "Organization/demo-otp",
                        "by": "Organization/demo-county-jail",
                    }
                ],
            }
        },
    )
    referral_id: str = Field(description="The ServiceRequest id (use it in /v1/referrals/{id})")
    jms_referral_id: str | None = Field(description="The JMS's own referral id")
    patient_id: str = Field(description="The FHIR Patient id")
    service_request_status: str | None = Field(description="FHIR ServiceRequest.status")
    status: str | None = Field(description="The current Task's status (requested, accepted...)")
    business_status: Coded | None = Field(description="The current milestone")
    status_reason: str | None = Field(description="Why rejected, cancelled, on hold or failed")
    owner: str | None = Field(description="Organization/<id> the current Task is with")
    task_id: str | None
    tasks: list[TaskSummary] = Field(description="Every Task of the referral, oldest first")
    services: list[str]
    priority: str | None
    facility: str | None = Field(description="Referring facility (Location/Organization)")
    intercept: int | None = Field(description="Sequential Intercept Model, 0-5")
    release: ReleaseView
    custody_stay: str | None = Field(
        None, description="Encounter/<id>: the custody stay the referral follows, if any"
    )
    outcomes: list[OutcomeView] = Field(description="What the provider recorded on completion")
    links: ReferralLinks
    timeline: list[TimelineEvent] | None = Field(
        None, description="Every change of status or milestone (single-referral answers only)"
    )
    appointments: list[AppointmentView] | None = Field(
        None, description="Appointments booked for it, soonest first (single-referral answers)"
    )
    person: PersonSummary | None = Field(
        None, description="Worklists only: the person, if the caller may see the Patient"
    )
    receiving_organization_name: str | None = Field(
        None, description="Worklists only: the current Task's owner's name"
    )
    facility_name: str | None = Field(
        None, description="Worklists only: the referring facility's name, if the caller may see it"
    )


class ConsentView(BaseModel):
    """A Part 2 consent as the JMS recorded it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "consent_id": "7a6b5c4d3e2f10a9b8c7d6e5f4a3b2c1",
                "patient_id": "3c4d5e6f708192a3b4c5d6e7f8091a2b",
                "status": "active",
                "signed_at": "2026-11-26T09:30:00-05:00",  # calendar: fixed (Swagger example)
                "recipients": ["Organization/demo-otp"],
                "purposes": ["TREAT"],
                "expires": None,
            }
        },
    )
    consent_id: str | None
    patient_id: str = Field(description="The FHIR Patient id")
    status: str | None = Field(description="active, inactive (revoked) or expired")
    signed_at: str | None
    recipients: list[str | None] = Field(description="Organization/<id> each consent names")
    purposes: list[str | None] = Field(description="Purposes of use permitted (v3 ActReason)")
    expires: str | None
