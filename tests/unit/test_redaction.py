"""Query values, URL credentials and exception messages never survive redaction."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from service.redaction import (
    query_names,
    redact_query,
    redact_target,
    redact_text,
    redact_url,
    safe_traceback,
)
from service.telemetry import redact_span, scrub_attributes


def test_query_names_keep_names_and_modifiers_not_values() -> None:
    q = "name:exact=Zebediah&birthdate=ge1990-04-02&subject:Patient.name=Zeb&_count=5&flag"
    assert query_names(q) == ["name:exact", "birthdate", "subject:Patient.name", "_count", "flag"]
    assert redact_query(q) == "name:exact&birthdate&subject:Patient.name&_count&flag"


def test_a_value_pasted_as_a_name_is_not_kept() -> None:
    # "Zebediah Smith" is not a parameter name: only its position survives.
    assert query_names("Zebediah%20Smith&_count=1") == ["?", "_count"]


def test_many_parameters_are_capped() -> None:
    names = query_names("&".join(f"p{i}=v" for i in range(50)))
    assert len(names) == 21 and names[-1] == "..."


def test_redact_url_drops_values_credentials_and_fragment() -> None:
    url = "https://user:secret@h.example.org:8443/fhir/Patient?name=Zebediah&_count=2#frag"
    out = redact_url(url)
    assert out == "https://h.example.org:8443/fhir/Patient?name&_count"
    assert "secret" not in out and "Zebediah" not in out


def test_redact_target_and_text() -> None:
    assert redact_target("/fhir/Patient?name=Zebediah") == "/fhir/Patient?name"
    assert redact_target("/fhir/Patient/123") == "/fhir/Patient/123"
    text = 'HTTP Request: GET https://idp/jwks?kid=Zebediah "HTTP/1.1 200 OK"'
    assert redact_text(text) == 'HTTP Request: GET https://idp/jwks?kid "HTTP/1.1 200 OK"'
    # SQL placeholders are left alone.
    assert redact_text("WHERE id = ? AND x = ?") == "WHERE id = ? AND x = ?"


def test_safe_traceback_has_frames_but_not_the_message() -> None:
    def explode() -> None:
        raise ValueError("patient Zebediah not found")

    try:
        explode()
    except ValueError as exc:
        where = safe_traceback(exc)
    assert "explode" in where and "test_redaction.py" in where
    assert "Zebediah" not in where


def test_scrub_attributes_rewrites_only_url_attributes() -> None:
    attrs: dict[str, AttributeValue] = {
        "http.url": "http://t/fhir/Patient?name=Zebediah",
        "url.full": "http://t/fhir/Patient?name=Zebediah",
        "http.target": "/fhir/Patient?name=Zebediah",
        "url.query": "name=Zebediah",
        "db.statement": "SELECT 1 WHERE a = ?",
        "http.status_code": 200,
    }
    changed = scrub_attributes(attrs)
    assert changed == {
        "http.url": "http://t/fhir/Patient?name",
        "url.full": "http://t/fhir/Patient?name",
        "http.target": "/fhir/Patient?name",
        "url.query": "name",
    }


def test_redact_span_strips_exception_text_status_description_and_query_values() -> None:
    context = SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=TraceFlags(1))
    span = ReadableSpan(
        name="GET /fhir/Patient",
        context=context,
        resource=Resource.create({}),
        attributes={"url.query": "name=Zebediah", "http.route": "/fhir/Patient"},
        events=[
            Event(
                "exception",
                {
                    "exception.type": "DataError",
                    "exception.message": 'invalid input syntax: "Zebediah"',
                    "exception.stacktrace": 'Traceback ...\nDataError: "Zebediah"',
                },
                timestamp=5,
            )
        ],
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR, 'invalid input syntax: "Zebediah"'),
        start_time=1,
        end_time=2,
    )
    out = redact_span(span)
    assert "Zebediah" not in repr(
        (out.name, dict(out.attributes or {}), [dict(e.attributes or {}) for e in out.events])
    )
    assert out.status.status_code is StatusCode.ERROR and not out.status.description
    assert dict(out.events[0].attributes or {}) == {"exception.type": "DataError"}
    assert out.attributes is not None and out.attributes["http.route"] == "/fhir/Patient"
    assert out.context == context and out.kind is SpanKind.SERVER
