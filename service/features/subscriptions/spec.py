"""A Subscription resource (Backport IG 1.1.0 on R4) read and checked into what delivery
needs: its topic, filters and channel. Everything the server cannot honour is refused, naming
the element."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

from service.auth.principal import Principal
from service.errors import BusinessRuleError, ForbiddenError, InvalidRequestError
from service.features.subscriptions.topics import (
    TOPIC_CANONICAL_EXTENSION,
    TOPICS,
    Filter,
    Topic,
    parse_filter,
)
from service.fhir.dates import parse_range
from service.settings import Settings

BACKPORT: Final = "http://hl7.org/fhir/uv/subscriptions-backport"
PROFILE: Final = f"{BACKPORT}/StructureDefinition/backport-subscription"
SERVER_CAPABILITY: Final = f"{BACKPORT}/CapabilityStatement/backport-subscription-server-r4"
FILTER_EXTENSION: Final = f"{BACKPORT}/StructureDefinition/backport-filter-criteria"
CONTENT_EXTENSION: Final = f"{BACKPORT}/StructureDefinition/backport-payload-content"
HEARTBEAT_EXTENSION: Final = f"{BACKPORT}/StructureDefinition/backport-heartbeat-period"
TIMEOUT_EXTENSION: Final = f"{BACKPORT}/StructureDefinition/backport-timeout"
MAX_COUNT_EXTENSION: Final = f"{BACKPORT}/StructureDefinition/backport-max-count"
TOPIC_CAPABILITY_EXTENSION: Final = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "capabilitystatement-subscriptiontopic-canonical"
)
CONTENTS: Final = ("empty", "id-only", "full-resource")
FHIR_JSON: Final = "application/fhir+json"
_LOCAL_HOSTS: Final = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Spec:
    """What the worker needs of a Subscription (stored as JSON in ``subscription_state``)."""

    topic: str
    filters: tuple[Filter, ...]
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    content: str
    payload: str  # the MIME type the notifications are sent as
    timeout: float
    heartbeat: int | None
    max_count: int
    end: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "filters": [f.to_json() for f in self.filters],
            "endpoint": self.endpoint,
            "headers": [list(h) for h in self.headers],
            "content": self.content,
            "payload": self.payload,
            "timeout": self.timeout,
            "heartbeat": self.heartbeat,
            "max_count": self.max_count,
            "end": self.end,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Spec:
        return Spec(
            topic=data["topic"],
            filters=tuple(Filter.from_json(f) for f in data["filters"]),
            endpoint=data["endpoint"],
            headers=tuple((h[0], h[1]) for h in data["headers"]),
            content=data["content"],
            payload=data.get("payload", FHIR_JSON),
            timeout=float(data["timeout"]),
            heartbeat=data.get("heartbeat"),
            max_count=int(data["max_count"]),
            end=data.get("end"),
        )

    @property
    def topic_def(self) -> Topic:
        return TOPICS[self.topic]

    def ended(self, now: datetime) -> bool:
        if not self.end:
            return False
        bounds = parse_range(self.end)
        return bounds is not None and bounds[1] < now


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    return [e for e in element.get("extension", []) if isinstance(e, dict) and e.get("url") == url]


def _one_value(element: Any, url: str, key: str, where: str) -> Any:
    found = _extensions(element, url)
    if len(found) > 1:
        raise InvalidRequestError(f"{where} has more than one {url} extension", expression=[where])
    return found[0].get(key) if found else None


def topic_of(body: dict[str, Any]) -> Topic:
    criteria = body.get("criteria")
    url = criteria.split("|")[0] if isinstance(criteria, str) else None
    if url not in TOPICS:
        # Earlier Backport drafts: the topic in an extension, criteria a search URL.
        older = _one_value(body, TOPIC_CANONICAL_EXTENSION, "valueUri", "Subscription") or (
            _one_value(body, TOPIC_CANONICAL_EXTENSION, "valueCanonical", "Subscription")
        )
        if isinstance(older, str) and older.split("|")[0] in TOPICS:
            url = older.split("|")[0]
    if url not in TOPICS:
        known = ", ".join(sorted(TOPICS))
        raise BusinessRuleError(
            f"Subscription.criteria {criteria!r} is not a topic this server supports; "
            f"supported topics (see /fhir/metadata): {known}",
            expression=["Subscription.criteria"],
        )
    return TOPICS[url]


def read_spec(body: dict[str, Any], *, settings: Settings, base_url: str | None) -> Spec:
    """The Subscription's topic, filters and channel, or an error naming what is refused."""
    topic = topic_of(body)
    filters: list[Filter] = []
    where = f"Subscription.criteria.extension('{FILTER_EXTENSION}')"
    for ext in _extensions(body.get("_criteria"), FILTER_EXTENSION):
        text = ext.get("valueString")
        if not isinstance(text, str):
            raise InvalidRequestError(
                "backport-filter-criteria takes a valueString like Task?owner=Organization/1",
                expression=[where],
            )
        filters.extend(parse_filter(topic, text, element=where, base_url=base_url))
    for name in topic.required:
        if not any(f.name == name for f in filters):
            raise BusinessRuleError(
                f"The topic {topic.url} needs the filter {name!r} "
                f"(e.g. {topic.resource_type}?{name}=...)",
                expression=[where],
            )
    channel = body.get("channel")
    if not isinstance(channel, dict):
        raise InvalidRequestError(
            "Subscription.channel is required", expression=["Subscription.channel"]
        )
    if channel.get("type") != "rest-hook":
        raise BusinessRuleError(
            f"Subscription.channel.type {channel.get('type')!r} is not supported: this server "
            "delivers notifications by rest-hook only",
            expression=["Subscription.channel.type"],
        )
    endpoint = channel.get("endpoint")
    check_endpoint(endpoint, settings=settings, element="Subscription.channel.endpoint")
    assert isinstance(endpoint, str)
    payload = channel.get("payload")
    mime = payload.split(";")[0].strip().lower() if isinstance(payload, str) else None
    if mime != FHIR_JSON:
        raise BusinessRuleError(
            f"Subscription.channel.payload {payload!r} is not supported: notifications are sent "
            f"as {FHIR_JSON}",
            expression=["Subscription.channel.payload"],
        )
    content = _one_value(
        channel.get("_payload"), CONTENT_EXTENSION, "valueCode", "Subscription.channel.payload"
    )
    if content not in CONTENTS:
        raise BusinessRuleError(
            f"Subscription.channel.payload needs the backport-payload-content extension with "
            f"one of {', '.join(CONTENTS)} (got {content!r})",
            expression=[f"Subscription.channel.payload.extension('{CONTENT_EXTENSION}')"],
        )
    headers: list[tuple[str, str]] = []
    for i, line in enumerate(channel.get("header") or []):
        name, sep, value = line.partition(":") if isinstance(line, str) else ("", "", "")
        name = name.strip()
        if (
            not sep
            or not name
            or any(c in line for c in "\r\n")
            or not all(c.isalnum() or c in "-_" for c in name)
        ):
            raise InvalidRequestError(
                f"Subscription.channel.header[{i}] must be one 'Name: value' HTTP header",
                expression=[f"Subscription.channel.header[{i}]"],
            )
        headers.append((name, value.strip()))
    heartbeat = _one_value(channel, HEARTBEAT_EXTENSION, "valueUnsignedInt", "Subscription.channel")
    timeout = _one_value(channel, TIMEOUT_EXTENSION, "valueUnsignedInt", "Subscription.channel")
    max_count = _one_value(channel, MAX_COUNT_EXTENSION, "valuePositiveInt", "Subscription.channel")
    for name, value, low in (("heartbeat", heartbeat, 1), ("timeout", timeout, 1)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise InvalidRequestError(
                f"backport-{name} must be a whole number of seconds, at least {low}",
                expression=["Subscription.channel"],
            )
    if max_count is not None and (not isinstance(max_count, int) or max_count < 1):
        raise InvalidRequestError(
            "backport-max-count must be a positive whole number",
            expression=["Subscription.channel"],
        )
    most = settings.subscription_max_events_per_notification
    end = body.get("end")
    return Spec(
        topic=topic.url,
        filters=tuple(filters),
        endpoint=endpoint,
        headers=tuple(headers),
        content=content,
        payload=payload if isinstance(payload, str) else FHIR_JSON,
        timeout=min(float(timeout), settings.subscription_timeout_seconds)
        if timeout
        else settings.subscription_timeout_seconds,
        heartbeat=heartbeat,
        max_count=min(max_count, most) if max_count else most,
        end=end if isinstance(end, str) else None,
    )


def check_endpoint(endpoint: Any, *, settings: Settings, element: str) -> None:
    """https:// only; http:// on this machine only under the development setting."""
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if parts is None or not parts.hostname or parts.scheme not in ("https", "http"):
        raise InvalidRequestError(
            f"{element} must be an absolute https:// URL, not {endpoint!r}", expression=[element]
        )
    if parts.scheme == "http":
        local = parts.hostname in _LOCAL_HOSTS
        if not (local and (settings.subscription_allow_local_http or settings.demo)):
            hint = (
                " (http://127.0.0.1 and http://localhost are accepted for development with "
                "HANDOFF_SUBSCRIPTION_ALLOW_LOCAL_HTTP=true)"
                if local
                else ""
            )
            raise BusinessRuleError(
                f"{element} {endpoint!r} is not https://: notifications carry patient data "
                f"and are sent over TLS only{hint}",
                expression=[element],
            )


def check_reach(
    topic: Topic, filters: list[Filter] | tuple[Filter, ...], who: Principal | None
) -> None:
    """Refuse filters that would reach data the caller's token and organization could not
    read: the scope to read the topic's resources, and organization filters naming the caller
    (a subscription naming another organization's Tasks alone is refused, not silently empty)."""
    if who is None or who.is_admin:
        return
    if not who.scopes.allows(topic.resource_type, "r"):
        raise ForbiddenError(
            f"Subscribing to {topic.url} needs read access to {topic.resource_type} "
            f"(system/{topic.resource_type}.r or wider)",
            expression=["Subscription.criteria"],
        )
    org = who.organization
    where = f"Subscription.criteria.extension('{FILTER_EXTENSION}')"
    if org is None:
        raise ForbiddenError(
            "Only a client acting for an organization may subscribe to patient data",
            expression=["Subscription.criteria"],
        )
    refs = [f for f in filters if f.kind == "reference" and f.name in ("owner", "requester")]
    if refs and not any(all(v == org for v in f.values) for f in refs):
        named = sorted({v for f in refs for v in f.values if v != org})
        raise ForbiddenError(
            f"The filter names {', '.join(named)}: your organization ({org}) may subscribe "
            f"only to {topic.resource_type}s it is a party to; filter on owner={org} or "
            f"requester={org}",
            expression=[where],
        )
