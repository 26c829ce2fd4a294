"""The subscription topics Handoff supports, their filters and how a version is matched.

R4 has no SubscriptionTopic resource: the topics are defined here and published by canonical
URL in the CapabilityStatement (``capabilitystatement-subscriptiontopic-canonical``).

* SDOH Clinical Care ``Task`` topic: a Task created, updated or deleted whose current state is
  ``status:not=draft&intent=order``, or a program's follow-up Task marked overdue; filters
  ``owner``, ``requester``, ``status``, ``code``, ``_lastUpdated``.
* SDOH Clinical Care ``ServiceRequest`` topic: a ServiceRequest updated or deleted; filters
  ``_id``, ``_lastUpdated``.
* Handoff's release-imminent topic: a referral whose person is released within ``hours`` hours
  and whose Task nobody accepted (found by a periodic scan, not by a change); filters
  ``requester`` and ``hours``.
* Handoff's consent-change topic: a Consent created or updated for a patient the subscriber is
  a party to (the subscriber's read access decides); filters ``patient``, ``status``,
  ``_lastUpdated``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

from service.errors import BusinessRuleError, InvalidRequestError
from service.fhir.codes import HANDOFF
from service.fhir.dates import parse_range
from service.fhir.followup_plan import is_overdue
from service.search.extract import extract_index, relative_reference

FilterKind = Literal["reference", "token", "date", "id", "number"]

TASK_TOPIC: Final = "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Task"
SERVICE_REQUEST_TOPIC: Final = (
    "http://hl7.org/fhir/us/sdoh-clinicalcare/SubscriptionTopic/Servicerequest"
)
RELEASE_IMMINENT_TOPIC: Final = f"{HANDOFF}/SubscriptionTopic/release-imminent"
CONSENT_TOPIC: Final = f"{HANDOFF}/SubscriptionTopic/consent-change"

# The most hours ahead a release-imminent subscription may look (the referral worklist's
# own bound: 15 days).
MAX_RELEASE_HOURS: Final = 360


@dataclass(frozen=True)
class Topic:
    url: str
    title: str
    resource_type: str
    triggers: frozenset[str]  # create | update | delete
    filters: dict[str, FilterKind]
    current_state: Callable[[dict[str, Any]], bool] = lambda _body: True
    scanned: bool = False  # fired by the worker's periodic scan, not by a change
    required: tuple[str, ...] = ()  # filters a subscription to it must give
    description: str = ""


def _task_state(body: dict[str, Any]) -> bool:
    """A referral Task (not draft), or a program's follow-up Task marked overdue (the
    escalation of a follow-up window that passed: features.followups)."""
    if body.get("intent") == "plan":
        return is_overdue(body)
    return body.get("status") != "draft" and body.get("intent") == "order"


TOPICS: Final[dict[str, Topic]] = {
    t.url: t
    for t in (
        Topic(
            TASK_TOPIC,
            "SDOH Clinical Care Task",
            "Task",
            frozenset({"create", "update", "delete"}),
            {
                "owner": "reference",
                "requester": "reference",
                "status": "token",
                "code": "token",
                "_lastUpdated": "date",
            },
            current_state=_task_state,
            description="A Task (status not draft, intent order) is created, changed or "
            "deleted, or a follow-up Task is marked overdue (and changes while it is)",
        ),
        Topic(
            SERVICE_REQUEST_TOPIC,
            "SDOH Clinical Care ServiceRequest",
            "ServiceRequest",
            frozenset({"update", "delete"}),
            {"_id": "id", "_lastUpdated": "date"},
            description="A ServiceRequest is changed or deleted (e.g. suspended, revoked)",
        ),
        Topic(
            RELEASE_IMMINENT_TOPIC,
            "Release imminent, referral not accepted",
            "Task",
            frozenset(),
            {"requester": "reference", "hours": "number"},
            scanned=True,
            required=("hours",),
            description="A referral's person is released within `hours` hours and its Task "
            "is not accepted (once per referral and subscription)",
        ),
        Topic(
            CONSENT_TOPIC,
            "Consent change",
            "Consent",
            frozenset({"create", "update"}),
            {"patient": "reference", "status": "token", "_lastUpdated": "date"},
            description="A Consent (42 CFR Part 2) is recorded, changed or revoked for a "
            "patient the subscriber is a party to",
        ),
    )
}

# Earlier drafts of the Backport IG named the topic in this extension instead of ``criteria``.
TOPIC_CANONICAL_EXTENSION: Final = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-topic-canonical"
)

_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


@dataclass(frozen=True)
class Filter:
    """One ``name=value[,value]`` of a subscription's filter criteria (values are ORed)."""

    name: str
    kind: FilterKind
    values: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "values": list(self.values)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Filter:
        return Filter(data["name"], data["kind"], tuple(data["values"]))


@dataclass
class Criteria:
    topic: Topic
    filters: list[Filter] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return [v for f in self.filters if f.name == name for v in f.values]


def parse_filter(topic: Topic, text: str, *, element: str, base_url: str | None) -> list[Filter]:
    """``Task?owner=Organization/1&status=requested`` (or without the ``Task?``) as filters."""
    query = text.strip()
    if "?" in query:
        rtype, _, query = query.partition("?")
        if rtype and rtype != topic.resource_type:
            raise BusinessRuleError(
                f"The filter {text!r} is on {rtype}, but the topic {topic.url} is about "
                f"{topic.resource_type}",
                expression=[element],
            )
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        raise InvalidRequestError(
            f"The filter {text!r} has no criteria; write it like "
            f"{topic.resource_type}?{next(iter(topic.filters))}=...",
            expression=[element],
        )
    out: list[Filter] = []
    for name, value in pairs:
        kind = topic.filters.get(name)
        if kind is None:
            allowed = ", ".join(sorted(topic.filters))
            raise BusinessRuleError(
                f"The topic {topic.url} does not allow the filter {name!r}; it allows: {allowed}",
                expression=[element],
            )
        values = tuple(v.strip() for v in value.split(","))
        if not value or any(not v for v in values):
            raise InvalidRequestError(
                f"The filter {name!r} has an empty value", expression=[element]
            )
        out.append(Filter(name, kind, tuple(_normal(kind, v, element, base_url) for v in values)))
    return out


def _normal(kind: FilterKind, value: str, element: str, base_url: str | None) -> str:
    if kind == "reference":
        ref = relative_reference(value, base_url)
        if "/" not in ref or "://" in ref:
            raise InvalidRequestError(
                f"{value!r} is not a reference this server holds; give it as Type/id "
                "(e.g. Organization/123)",
                expression=[element],
            )
        return ref
    if kind == "date":
        prefix = value[:2] if value[:2] in _DATE_PREFIXES else ""
        if parse_range(value[len(prefix) :]) is None:
            raise InvalidRequestError(
                f"{value!r} is not a FHIR date (e.g. gt2026-01-01T00:00:00Z)",
                expression=[element],
            )
        return value
    if kind == "number":
        try:
            hours = int(value)
        except ValueError:
            hours = -1
        if not 1 <= hours <= MAX_RELEASE_HOURS:
            raise InvalidRequestError(
                f"hours must be a whole number from 1 to {MAX_RELEASE_HOURS}, not {value!r}",
                expression=[element],
            )
        return str(hours)
    return value


def matches(
    topic: Topic,
    filters: list[Filter],
    body: dict[str, Any],
    *,
    base_url: str | None,
) -> bool:
    """Whether a version ``body`` (with its id and meta) passes the topic's current-state
    criteria and every filter (filters are ANDed, a filter's values ORed)."""
    if body.get("resourceType") != topic.resource_type or not topic.current_state(body):
        return False
    if not filters:
        return True
    index = extract_index(body, version_id=0, base_url=base_url)
    for f in filters:
        if f.kind == "number":
            continue  # a scan parameter, not a condition on the resource
        if not any(_value_matches(f, v, body, index) for v in f.values):
            return False
    return True


def _value_matches(f: Filter, value: str, body: dict[str, Any], index: list[Any]) -> bool:
    if f.kind == "id":
        return body.get("id") == value
    if f.kind == "date":
        updated = (body.get("meta") or {}).get("lastUpdated")
        if not isinstance(updated, str):
            return False
        return _date_matches(value, updated)
    rows = [r for r in index if r.param == f.name]
    if f.kind == "reference":
        return any(r.value == value for r in rows)
    system, bar, code = value.rpartition("|")
    for r in rows:
        if r.value != code:
            continue
        if not bar or (system == "" and r.system is None) or (system and r.system == system):
            return True
    return False


def _date_matches(value: str, instant: str) -> bool:
    prefix = value[:2] if value[:2] in _DATE_PREFIXES else "eq"
    wanted = parse_range(value[len(prefix) :] if value[:2] in _DATE_PREFIXES else value)
    have = parse_range(instant)
    if wanted is None or have is None:
        return False
    low, high = wanted
    at: datetime = have[0]
    if prefix == "eq":
        return low <= at <= high
    if prefix == "ne":
        return not low <= at <= high
    if prefix in ("gt", "sa"):
        return at > high
    if prefix in ("lt", "eb"):
        return at < low
    if prefix == "ge":
        return at >= low
    return at <= high  # le
