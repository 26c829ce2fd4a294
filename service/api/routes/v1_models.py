"""Plain-JSON request models shared by the JMS API (/v1): no FHIR knowledge needed."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from service.domain.text import nul_message, nul_path
from service.features.people import Person
from service.fhir.codes import STAFF_ROLES

Sex = Literal["male", "female", "other", "unknown"]
StaffRole = Literal[
    "peer-specialist",
    "nurse",
    "clinician",
    "classification-officer",
    "case-manager",
    "reentry-coordinator",
    "other",
]
# Strict: a JSON integer, as the schema says (lax mode took false as 0 and "3" as 3).
Intercept = Annotated[
    int, Field(ge=0, le=5, strict=True, description="Sequential Intercept Model, 0-5")
]

# Pydantic reads a bare number as Unix time ("0.5" becomes 1970-01-01T00:00:00.5Z): a JMS
# that sends one has a bug, and answering as if it meant 1970 would hide it.
_ISO_DATE = re.compile(r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_text(what: str, example: str) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, dt.date) and not (
            isinstance(value, str) and _ISO_DATE.match(value)
        ):
            raise ValueError(f"must be an ISO 8601 {what} such as {example}")
        return value

    return check


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError(f"include a time zone, e.g. {_INSTANT_EXAMPLES}")
    try:  # stored and compared in UTC, which must stay within the years 1 to 9999
        value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("must fall within the years 0001 to 9999 in UTC") from None
    return value


# "+05:00" written unencoded in a URL query arrives as " 05:00" (a "+" there means a space).
_DECODED_PLUS = re.compile(r"T[0-9:.,]+ [0-9]{2}(:?[0-9]{2})?\s*$")
_INSTANT_EXAMPLES = "2026-11-26T09:30:00-05:00 or 2026-11-26T14:30:00Z"


def _instant(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Pydantic's datetime parsing, with messages that say what an instant is (pydantic's own
    says "a valid datetime or date", though a date alone is refused here)."""
    try:
        return handler(value)
    except ValidationError as exc:
        if any(e["type"].startswith(("datetime", "date")) for e in exc.errors()):
            if isinstance(value, str) and _DECODED_PLUS.search(value):
                raise ValueError(
                    f"{value[:40]!r} has a space before its UTC offset: in a URL query a '+' "
                    "must be encoded as %2B (e.g. 2026-11-26T09:30:00%2B01:00), or give the "
                    "time in UTC with Z (2026-11-26T08:30:00Z)"
                ) from None
            raise ValueError(
                f"must be an ISO 8601 date-time with a time zone, e.g. {_INSTANT_EXAMPLES}"
            ) from None
        raise


# As documented: FHIR's instant (offsets to 14:00), in a year that stays one in UTC.
INSTANT_PATTERN = (
    r"^[1-9][0-8][0-9]{2}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)$"
)
Instant = Annotated[
    dt.datetime,
    BeforeValidator(_iso_text("date-time with a time zone", _INSTANT_EXAMPLES)),
    WrapValidator(_instant),
    AfterValidator(_aware),
    Field(json_schema_extra={"pattern": INSTANT_PATTERN}),
]
Day = Annotated[dt.date, BeforeValidator(_iso_text("date", "2026-11-26"))]
assert set(STAFF_ROLES) == set(StaffRole.__args__)  # type: ignore[attr-defined]


class JmsRequest(BaseModel):
    """Base of every /v1 request body: refuses U+0000 anywhere in it, naming the field
    (PostgreSQL cannot store it; service.domain.text)."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if (where := nul_path(data)) is not None:
            raise ValueError(nul_message(where))
        return data


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line: list[str] = Field(default_factory=list, max_length=4)
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None


class PersonIn(BaseModel):
    """The person as the jail knows them: at least one of person_id or booking_number, with
    name, birth date and sex. Or, for a party to a referral, the Patient it received
    (``patient``), which its records then attach to."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "person_id": "P-100234",
                "booking_number": "2026-11-0457",
                "family_name": "Rivera",
                "given_names": ["Dana"],
                "birth_date": "1988-03-14",
                "sex": "female",
            }
        },
    )
    patient: str | None = Field(
        None,
        pattern=r"^Patient/[A-Za-z0-9\-\.]{1,64}$",
        description="Patient/<id> of a person you were referred (instead of the fields below)",
    )
    person_id: str | None = Field(None, min_length=1, max_length=64, description="Jail person id")
    booking_number: str | None = Field(None, min_length=1, max_length=64)
    family_name: str | None = Field(None, min_length=1, max_length=100)
    given_names: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        None, min_length=1, max_length=5
    )
    birth_date: Day | None = None
    sex: Sex | None = None
    phone: str | None = Field(None, max_length=40, description="Only if the person consented")
    address: Address | None = Field(None, description="Only if the person consented")

    @model_validator(mode="after")
    def _identified(self) -> PersonIn:
        if self.patient:
            return self
        if not self.person_id and not self.booking_number:
            raise ValueError("give the jail's person_id or booking_number (or both)")
        missing = [
            name
            for name in ("family_name", "given_names", "birth_date", "sex")
            if getattr(self, name) is None
        ]
        if missing:
            raise ValueError(f"give the person's {', '.join(missing)} (or patient)")
        assert self.birth_date is not None
        if self.birth_date > dt.date.today():
            raise ValueError("birth_date is in the future")
        return self

    def to_domain(self) -> Person:
        address: dict[str, Any] | None = None
        if self.address:
            address = {"use": "home", "line": self.address.line}
            for key, value in (
                ("city", self.address.city),
                ("state", self.address.state),
                ("postalCode", self.address.postal_code),
            ):
                if value:
                    address[key] = value
        return Person(
            person_id=self.person_id,
            booking_number=self.booking_number,
            family_name=self.family_name or "",
            given_names=self.given_names or [],
            birth_date=self.birth_date.isoformat() if self.birth_date else "",
            sex=self.sex or "unknown",
            phone=self.phone,
            address=address,
            patient_id=self.patient.removeprefix("Patient/") if self.patient else None,
        )


class StaffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=64, description="Staff id in the JMS")
    name: str = Field(min_length=1, max_length=200)
    role: StaffRole
