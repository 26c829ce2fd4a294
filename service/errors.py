"""Domain errors: each carries its HTTP status and FHIR issue code.

Nothing here imports FastAPI; ``service.api.errors`` turns these into OperationOutcomes.

    ServiceError (500 exception)
    ├── InvalidRequestError (400 invalid)         malformed parameters, headers, Bundle shape
    │   └── InvalidResourceError (400 structure)  body is not a valid R4 resource
    ├── AuthenticationError (401 login)           missing / bad token
    ├── ForbiddenError (403 forbidden)            valid token, not allowed
    │   └── InsufficientScopeError (403)          scope does not cover the interaction
    ├── ResourceNotFoundError (404 not-found)
    ├── MethodNotAllowedError (405 not-supported)
    ├── NotAcceptableError (406 not-supported)
    ├── ConflictError (409 conflict)
    ├── ResourceGoneError (410 deleted)
    ├── PreconditionFailedError (412 conflict)    If-Match mismatch, ambiguous conditional
    ├── PayloadTooLargeError (413 too-costly)     body, or Bundle entries, over the limit
    ├── UriTooLongError (414 too-costly)
    ├── UnsupportedMediaTypeError (415 not-supported)
    ├── BusinessRuleError (422 business-rule)     rules beyond structure (transitions, bindings...)
    ├── TooManyRequestsError (429 throttled)      one client's concurrent requests over its share
    ├── HeadersTooLargeError (431 too-costly)
    └── ServiceUnavailableError (503 transient)   database down
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

Severity = Literal["fatal", "error", "warning", "information"]


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue, FHIR-neutral so that any layer can build it."""

    severity: Severity
    code: str
    diagnostics: str
    expression: tuple[str, ...] = field(default_factory=tuple)


class ServiceError(Exception):
    status: ClassVar[int] = 500
    issue_code: ClassVar[str] = "exception"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: Sequence[str] = (),
        issues: Sequence[Issue] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.headers = headers or {}
        self.issues: tuple[Issue, ...] = tuple(issues) or (
            Issue("error", self.issue_code, diagnostics, tuple(expression)),
        )


class InvalidRequestError(ServiceError):
    status, issue_code = 400, "invalid"


def not_json(reason: str, position: int | None) -> InvalidRequestError:
    """A body that does not parse as JSON (FHIR or /v1): what the parser said, and where."""
    where = f" at character {position}" if position is not None else ""
    return InvalidRequestError(f"The body is not valid JSON ({reason}{where})")


class InvalidResourceError(InvalidRequestError):
    status, issue_code = 400, "structure"


class AuthenticationError(ServiceError):
    status, issue_code = 401, "login"


class ForbiddenError(ServiceError):
    status, issue_code = 403, "forbidden"


class InsufficientScopeError(ForbiddenError):
    status, issue_code = 403, "forbidden"


class ResourceNotFoundError(ServiceError):
    status, issue_code = 404, "not-found"


class MethodNotAllowedError(ServiceError):
    """HTTP requires a 405 to say, in ``Allow``, which methods the target does accept."""

    status, issue_code = 405, "not-supported"

    def __init__(self, diagnostics: str, *, allow: Sequence[str]) -> None:
        super().__init__(diagnostics, headers={"Allow": ", ".join(allow)})


class NotAcceptableError(ServiceError):
    status, issue_code = 406, "not-supported"


class ConflictError(ServiceError):
    status, issue_code = 409, "conflict"


class ResourceGoneError(ServiceError):
    status, issue_code = 410, "deleted"


class PreconditionFailedError(ServiceError):
    status, issue_code = 412, "conflict"


class PayloadTooLargeError(ServiceError):
    status, issue_code = 413, "too-costly"


class UriTooLongError(ServiceError):
    status, issue_code = 414, "too-costly"


class UnsupportedMediaTypeError(ServiceError):
    status, issue_code = 415, "not-supported"


class BusinessRuleError(ServiceError):
    status, issue_code = 422, "business-rule"


class TooManyRequestsError(ServiceError):
    status, issue_code = 429, "throttled"


class HeadersTooLargeError(ServiceError):
    status, issue_code = 431, "too-costly"


class ServiceUnavailableError(ServiceError):
    status, issue_code = 503, "transient"
