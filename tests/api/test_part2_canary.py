"""Canary crawl: 42 CFR Part 2 as a property of the whole application, not a list of paths.

A county network (a jail, its health unit, two treatment programs, a syringe services program,
a peer organization and a bystander) makes referrals, a re-referral after a rejection, a
cancellation after acceptance, screenings, and consents granted, revoked and expired. Every
element some view withholds from someone carries a unique marker. Then each organization calls
every route of the application (enumerated from its OpenAPI route table: a route added later is
crawled, or must be excluded here with a reason) and every response is checked against an
oracle written here, independently of ``workflows.disclosure``: a marker appears only in
responses to the organizations the oracle names, each of them sees it somewhere, and each
response that shows a record's marker left an AuditEvent naming that record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.openapi import generate
from tests.builders import (
    FHIR_JSON,
    fhir_consent,
    in_future,
    jms_person,
    jms_referral,
    organization,
)

pytestmark = pytest.mark.usefixtures("instruments")
YES, NO = "LA33-6", "LA32-8"
ORGS = ("jail", "health", "otp", "otp2", "ssp", "peer", "bystander")

# Routes not crawled, and why (each still has its own tests). The /dashboard pages are not in
# the OpenAPI table: they show what GET /v1/measures answers the signed-in person's organization
# (tests/api/test_dashboard.py: another organization's figures never show).
EXCLUDED = {
    ("post", "/auth/token"): "issues tokens: no resource content",
    ("post", "/v1/naloxone"): "records kits (no Part 2 referral content in this scenario)",
    ("post", "/v1/overdose-responses"): "records reversals (idem)",
    ("patch", "/v1/referrals/{referral_id}"): "changes the release date: tested in test_referrals",
    # Custody stays are no Part 2 records (where and when, not what treatment): writes answer
    # with the stay only (test_custody).
    ("post", "/v1/bookings"): "custody stay write (test_custody)",
    ("patch", "/v1/bookings/{booking_number}"): "custody stay write (test_custody)",
    ("post", "/v1/bookings/{booking_number}/cancel"): "custody stay write (test_custody)",
    ("post", "/v1/bookings/{booking_number}/release"): "custody stay write (test_custody)",
    ("post", "/v1/bookings/{booking_number}/release/cancel"): "custody stay write (test_custody)",
    ("post", "/v1/bookings/{booking_number}/transfers"): "custody stay write (test_custody)",
    ("post", "/v1/hl7v2/adt"): "answers an HL7 ACK, no resource content (test_custody)",
    ("put", "/v1/admin/identity-domains/{domain}"): "administrator only (test_identity)",
    ("delete", "/v1/admin/identity-domains/{domain}"): "administrator only (test_identity)",
    ("post", "/fhir/{type}/$match"): "Patients only, as the caller may read them (test_identity)",
    ("post", "/fhir/{type}/$merge"): "administrator only (test_identity)",
    # Aggregates only, counted as GET /v1/measures counts them (crawled): test_measures.
    ("post", "/fhir/{type}/$evaluate-measure"): "aggregate counts, Parameters (test_measures)",
    ("post", "/fhir/{type}/{resource_id}/$evaluate-measure"): "idem (test_measures)",
    ("put", "/v1/directory/services/{service_id}/accepting"): "directory data (test_directory)",
    # Webhooks answer with their configuration only; what their messages and /events disclose
    # passes the read policy of the webhook's organization (test_webhooks).
    ("post", "/v1/webhooks"): "webhook configuration (test_webhooks)",
    ("put", "/v1/webhooks/{webhook_id}"): "webhook configuration (test_webhooks)",
    ("delete", "/v1/webhooks/{webhook_id}"): "webhook configuration (test_webhooks)",
    # A follow-up plan is a program's schedule, no patient data (test_followup_plans).
    ("post", "/v1/follow-up-plans"): "a program's plan (test_followup_plans)",
    ("put", "/v1/follow-up-plans/{plan_id}"): "a program's plan (test_followup_plans)",
}


def person(key: str) -> dict[str, Any]:
    return jms_person(
        f"P-CANARY-{key}",
        family=f"Canary{key}",
        given="Pat",
        birth_date="1980-02-03",
        booking_number=None,
    )


def release_in(days: int) -> str:
    return in_future(days=days)


@dataclass
class Seen:
    org: str
    method: str
    path: str
    status: int
    request_id: str
    text: str


@dataclass
class World:
    ids: dict[str, str] = field(default_factory=dict)  # org key -> Organization/id
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    # marker -> (organizations that may see it, the records it lives in)
    allowed: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    # Task id -> organizations that may know the Task exists (its parties)
    parties: dict[str, set[str]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    ids_by_type: dict[str, set[str]] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)
    referrals: set[str] = field(default_factory=set)

    def mark(self, marker: str, orgs: set[str], *records: str) -> None:
        self.allowed[marker] = (orgs, set(records))

    def record(self, ref: str) -> None:
        rtype, rid = ref.split("/")[:2]
        self.ids_by_type.setdefault(rtype, set()).add(rid)


async def call(w: World, org: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
    r = await w.clients[org].request(method, url, **kwargs)
    assert r.status_code < 500, (org, method, url, r.text)
    w.seen.append(
        Seen(
            org,
            method,
            r.request.url.path,
            r.status_code,
            r.headers.get("x-request-id", ""),
            r.text,
        )
    )
    return r


async def ok(w: World, org: str, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    r = await call(w, org, method, url, **kwargs)
    assert r.status_code in (200, 201), (org, method, url, r.text)
    body: dict[str, Any] = r.json()
    return body


async def put_task(w: World, org: str, task_id: str, **changes: Any) -> dict[str, Any]:
    task = await ok(w, org, "GET", f"/fhir/Task/{task_id}")
    headers = {**FHIR_JSON, "If-Match": f'W/"{task["meta"]["versionId"]}"'}
    return await ok(
        w, org, "PUT", f"/fhir/Task/{task_id}", json={**task, **changes}, headers=headers
    )


def referral(key: str, receiver: str, note: str, **extra: Any) -> dict[str, Any]:
    return jms_referral(
        receiver,
        person=person(key),
        services=["moud-methadone", "peer-support"],
        release_at=release_in(5),
        notes=note,
        **extra,
    )


async def build(w: World, admin: httpx.AsyncClient, org_client: Any) -> None:
    for key in ORGS:
        made = await admin.post(
            "/fhir/Organization", json=organization(key, key), headers=FHIR_JSON
        )
        w.ids[key] = f"Organization/{made.json()['id']}"
        w.clients[key] = await org_client(w.ids[key])
    ids = w.ids

    # Person A: screened and referred by the jail to the OTP, under the jail's consent naming
    # the OTP; the OTP accepts and reports progress (no consent of the OTP's names the jail).
    answers = {f"dast10-{i}": YES if i < 4 else NO for i in range(1, 11)}
    screening = await ok(
        w,
        "jail",
        "POST",
        "/v1/assessments",
        json={
            "person": person("A"),
            "instrument": "dast-10",
            "answers": answers,
            "administered_by": {"name": "MK-A-SCREENER", "role": "nurse"},
            "administered_at": (datetime.now(UTC) - timedelta(hours=3)).isoformat(),
            "intercept": 3,
        },
    )
    a = await ok(
        w, "jail", "POST", "/v1/referrals", json=referral("A", ids["otp"], "MK-A-JAILNOTE")
    )
    await ok(
        w,
        "jail",
        "POST",
        "/v1/consents",
        json={
            "person": person("A"),
            "signed_at": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
            "signed_by": "Pat CanaryA (self)",
            "recipients": [ids["otp"]],
        },
    )
    await put_task(
        w,
        "otp",
        a["task_id"],
        status="accepted",
        businessStatus={"text": "MK-A-OTPBS"},
        note=[{"text": "MK-A-OTPNOTE"}],
    )
    records_a = {f"ServiceRequest/{a['referral_id']}", f"Task/{a['task_id']}"}
    w.mark("MK-A-JAILNOTE", {"jail", "otp"}, *records_a)
    w.parties[a["task_id"]] = {"jail", "otp"}
    w.mark("MK-A-OTPBS", {"otp"}, f"Task/{a['task_id']}")
    w.mark("MK-A-OTPNOTE", {"otp"}, f"Task/{a['task_id']}")
    screening_records = [screening["questionnaire_response"], *screening["observations"]]
    w.mark("MK-A-SCREENER", {"jail", "otp"}, *screening_records)
    for ref in screening_records:
        w.record(ref)

    # Person B: referred to OTP2 under a consent the jail then revokes; OTP2 rejects; the jail
    # re-refers to the syringe services program, which accepts and, under its own consent
    # naming the jail, reports back.
    b = await ok(
        w, "jail", "POST", "/v1/referrals", json=referral("B", ids["otp2"], "MK-B-JAILNOTE")
    )
    consent_b = await ok(
        w,
        "jail",
        "POST",
        "/v1/consents",
        json={
            "person": person("B"),
            "signed_at": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
            "signed_by": "Pat CanaryB (self)",
            "recipients": [ids["otp2"]],
        },
    )
    await ok(
        w,
        "jail",
        "POST",
        f"/v1/consents/{consent_b['consent_id']}/revoke",
        json={"reason": "withdrawn in writing"},
    )
    await put_task(w, "otp2", b["task_id"], status="rejected", statusReason={"text": "MK-B-REJECT"})
    again = await ok(
        w,
        "jail",
        "POST",
        f"/v1/referrals/{b['referral_id']}/re-refer",
        json={"receiving_organization": ids["ssp"]},
    )
    second = again["task_id"]
    await put_task(w, "ssp", second, status="accepted", note=[{"text": "MK-B-SSPNOTE"}])
    await fhir_consent(
        w.clients["ssp"],
        f"Patient/{b['patient_id']}",
        custodian=ids["ssp"],
        recipients=[ids["jail"]],
    )
    # The syringe services program books an appointment (its record: the jail sees it under the
    # program's consent), reschedules and cancels it.
    appointments = f"/v1/referrals/{b['referral_id']}/appointments"
    appt = await ok(
        w, "ssp", "POST", appointments, json={"start": release_in(7), "description": "MK-B-APPT"}
    )
    appt_url = f"{appointments}/{appt['appointment_id']}"
    await ok(w, "ssp", "PATCH", appt_url, json={"start": release_in(8)})
    await ok(w, "ssp", "POST", f"{appt_url}/cancel", json={"reason": "MK-B-APPTCANCEL"})
    appt_record = f"Appointment/{appt['appointment_id']}"
    w.mark("MK-B-APPT", {"ssp", "jail"}, appt_record)
    w.mark("MK-B-APPTCANCEL", {"ssp", "jail"}, appt_record)
    w.record(appt_record)
    # Its contact log is its own, whatever consent names the jail.
    contact = await ok(
        w,
        "ssp",
        "POST",
        f"/v1/people/{b['patient_id']}/contacts",
        json={"at": release_in(-1), "medium": "phone", "reached": False, "next_step": "MK-B-LOG"},
    )
    w.mark("MK-B-LOG", {"ssp"}, f"Communication/{contact['contact_id']}")
    w.record(f"Communication/{contact['contact_id']}")
    w.mark("MK-B-JAILNOTE", {"jail"}, f"ServiceRequest/{b['referral_id']}", f"Task/{b['task_id']}")
    w.mark("MK-B-REJECT", {"otp2"}, f"Task/{b['task_id']}")
    w.mark("MK-B-SSPNOTE", {"ssp", "jail"}, f"Task/{second}")
    w.parties[b["task_id"]] = {"jail", "otp2"}
    w.parties[second] = {"jail", "ssp"}

    # Person C: referred to the peer organization, which accepts; the jail cancels. A consent
    # the jail records through FHIR has already expired.
    c = await ok(
        w, "jail", "POST", "/v1/referrals", json=referral("C", ids["peer"], "MK-C-JAILNOTE")
    )
    await put_task(
        w, "peer", c["task_id"], status="accepted", businessStatus={"text": "MK-C-PEERBS"}
    )
    await ok(
        w,
        "jail",
        "POST",
        f"/v1/referrals/{c['referral_id']}/cancel",
        json={"reason": "MK-C-CANCEL"},
    )
    long_ago = datetime.now(UTC) - timedelta(days=90)
    await fhir_consent(
        w.clients["jail"],
        f"Patient/{c['patient_id']}",
        custodian=ids["jail"],
        recipients=[ids["peer"]],
        period={"start": long_ago.isoformat(), "end": (long_ago + timedelta(days=30)).isoformat()},
    )
    w.mark("MK-C-JAILNOTE", {"jail"}, f"ServiceRequest/{c['referral_id']}", f"Task/{c['task_id']}")
    w.mark("MK-C-PEERBS", {"peer"}, f"Task/{c['task_id']}")
    w.mark("MK-C-CANCEL", {"jail"}, f"Task/{c['task_id']}")
    w.parties[c["task_id"]] = {"jail", "peer"}

    for made in (a, b, c):
        w.referrals.add(made["referral_id"])
        w.patients.add(made["patient_id"])
        w.record(f"ServiceRequest/{made['referral_id']}")
        w.record(f"Task/{made['task_id']}")
    w.record(f"Task/{second}")
    everything = (await admin.get("/fhir/Consent", params={"_count": 100})).json()
    for entry in everything.get("entry", []):
        w.record(f"Consent/{entry['resource']['id']}")
    for pid in w.patients:
        w.record(f"Patient/{pid}")
    w.record(ids["jail"])


def concrete(w: World, template: str, versions: dict[str, int]) -> list[str]:
    """URLs for a GET route template, with the scenario's ids in its path parameters."""
    if template == "/v1/measures":  # aggregates over the releases an organization is party to
        today = datetime.now(UTC).date()
        period = f"from={today - timedelta(days=30)}&to={today + timedelta(days=30)}"
        return [f"{template}?{period}&stratify=facility,intercept,month"]
    if "{" not in template:
        return [template]
    m = re.match(r"^/fhir/([A-Za-z]+)/\{resource_id\}(.*)$", template)
    if m:
        rtype, rest = m.groups()
        urls = []
        for rid in sorted(w.ids_by_type.get(rtype, ())):
            if rest == "/_history/{version_id}":
                top = versions.get(f"{rtype}/{rid}", 1)
                urls += [f"/fhir/{rtype}/{rid}/_history/{v}" for v in range(1, top + 1)]
            else:
                urls.append(f"/fhir/{rtype}/{rid}{rest}")
        return urls
    values = {
        "referral_id": sorted(w.referrals),
        "patient_id": sorted(w.patients),
        "key": ["dast-10"],
        "consent_id": [],
        # Custody stays, identifier domains and directory services are no Part 2 records.
        "booking_number": [],
        "domain": [],
        "service_id": [],
        "webhook_id": [],  # the crawled organizations register none (test_webhooks)
        "plan_id": ["post-release-follow-up"],  # the built-in plan: no patient data
    }
    name = re.search(r"\{(\w+)\}", template)
    assert name is not None
    return [template.replace(f"{{{name.group(1)}}}", v) for v in values[name.group(1)]]


def searches(w: World, path: str) -> list[str]:
    rtype = path.rsplit("/", 1)[1]
    urls = [f"{path}?_count=100"]
    urls += [f"{path}?_id={rid}" for rid in sorted(w.ids_by_type.get(rtype, ()))]
    urls += (
        [f"{path}?patient=Patient/{pid}" for pid in sorted(w.patients)]
        if rtype
        in (
            "Task",
            "ServiceRequest",
            "QuestionnaireResponse",
            "Observation",
            "Consent",
            "Appointment",
        )
        else []
    )
    if rtype == "Task":
        urls += [f"{path}?_include=Task:focus&_include=Task:patient&_count=100"]
    if rtype == "ServiceRequest":
        urls += [f"{path}?_revinclude=Task:focus&_count=100"]
    return urls


async def crawl(w: World, admin: httpx.AsyncClient) -> set[tuple[str, str]]:
    """Every route, as every organization; returns the (method, template) pairs called."""
    schema = generate()
    versions = {}
    for rtype, rids in w.ids_by_type.items():
        for rid in rids:
            body = (await admin.get(f"/fhir/{rtype}/{rid}")).json()
            versions[f"{rtype}/{rid}"] = int(body["meta"]["versionId"])
    called: set[tuple[str, str]] = set()
    for template, operations in schema["paths"].items():
        if "get" not in operations:
            continue
        for org in ORGS:
            if template.startswith("/fhir/") and re.fullmatch(r"/fhir/[A-Z][A-Za-z]+", template):
                urls = searches(w, template)
            else:
                urls = concrete(w, template, versions)
            for url in urls:
                await call(w, org, "GET", url)
        called.add(("get", template))
    # FHIR _search by POST, transactions and batches of reads, and their replays.
    for template, operations in schema["paths"].items():
        if template.endswith("/_search") and "post" in operations:
            rtype = template.split("/")[2]
            for org in ORGS:
                for rid in sorted(w.ids_by_type.get(rtype, ()))[:3]:
                    await call(w, org, "POST", template, data={"_id": rid})
            called.add(("post", template))
    reads = [
        {"request": {"method": "GET", "url": f"{rtype}/{rid}"}}
        for rtype in ("Task", "ServiceRequest", "QuestionnaireResponse", "Observation")
        for rid in sorted(w.ids_by_type.get(rtype, ()))
    ]
    for org in ORGS:
        for kind in ("transaction", "batch"):
            bundle = {"resourceType": "Bundle", "type": kind, "entry": reads}
            headers = {**FHIR_JSON}
            if kind == "transaction":
                headers["Idempotency-Key"] = f"canary-{org}"
            await call(w, org, "POST", "/fhir", json=bundle, headers=headers)
            if kind == "transaction":  # the replay
                await call(w, org, "POST", "/fhir", json=bundle, headers=headers)
    called.add(("post", "/fhir"))
    # Writes: each organization sends back the view it was shown of each record (a PUT),
    # tests a JSON Patch against it, and tries to delete the referrals and consents (refused:
    # they end by moves of their own); every answer is a view too. A create of a record of
    # its own shows only what it wrote.
    for org in ORGS:
        await call(
            w, org, "POST", "/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON
        )
        for rtype in sorted(w.ids_by_type):
            for rid in sorted(w.ids_by_type[rtype]):
                url = f"/fhir/{rtype}/{rid}"
                r = await call(w, org, "GET", url)
                if r.status_code != 200:
                    await call(
                        w,
                        org,
                        "PUT",
                        url,
                        json={"resourceType": rtype, "id": rid},
                        headers=FHIR_JSON,
                    )
                    continue
                view = r.json()
                headers = {**FHIR_JSON, "If-Match": f'W/"{view["meta"]["versionId"]}"'}
                await call(w, org, "PUT", url, json=view, headers=headers)
                patch = [{"op": "test", "path": "/id", "value": rid}]
                await call(
                    w,
                    org,
                    "PATCH",
                    url,
                    content=json.dumps(patch),
                    headers={"Content-Type": "application/json-patch+json"},
                )
                if rtype in ("Task", "ServiceRequest", "Consent"):
                    await call(w, org, "DELETE", url)
    return called


def family(template: str) -> str:
    """One FHIR interaction serves every type alike: /fhir/Task/{resource_id} and
    /fhir/Patient/{resource_id} are one route family."""
    return re.sub(r"^/fhir/[A-Z][A-Za-z]+", "/fhir/{type}", template)


def template_of(schema_paths: dict[str, Any], method: str, path: str) -> str | None:
    for template, operations in schema_paths.items():
        if method.lower() not in operations:
            continue
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template
    return None


async def test_every_route_discloses_exactly_what_the_oracle_allows(
    client: httpx.AsyncClient, org_client: Any
) -> None:
    w = World()
    await build(w, client, org_client)
    called = await crawl(w, client)

    # Every route of the application was called (in the scenario or the crawl) or is excluded.
    paths = generate()["paths"]
    for seen in w.seen:
        template = template_of(paths, seen.method, seen.path)
        if template is not None:
            called.add((seen.method.lower(), template))
    methods = ("get", "post", "put", "patch", "delete")
    every = {(m, family(t)) for t, ops in paths.items() for m in ops if m in methods}
    crawled = {(m, family(t)) for m, t in called}
    missing = sorted(every - crawled - set(EXCLUDED))
    assert not missing, f"routes neither crawled nor excluded: {missing}"

    # No marker reaches an organization the oracle does not name.
    leaks = []
    shown: dict[tuple[str, str], set[str]] = {}  # (org, marker) -> request ids
    for seen in w.seen:
        for marker, (orgs, _records) in w.allowed.items():
            if marker in seen.text:
                if seen.org not in orgs:
                    leaks.append((seen.org, marker, seen.method, seen.path, seen.status))
                shown.setdefault((seen.org, marker), set()).add(seen.request_id)
    assert not leaks, leaks

    # A Task is shown (as a resource, or as an item of a /v1 view) only to its parties; a URL
    # or a not-found message that echoes what the caller asked for shows nothing.
    strangers, known = [], set()
    for seen in w.seen:
        if not 200 <= seen.status < 300:
            continue
        for task_id, orgs in w.parties.items():
            shows = f'"id":"{task_id}"' in seen.text or f'"task_id":"{task_id}"' in seen.text
            if shows and seen.org not in orgs:
                strangers.append((seen.org, task_id, seen.method, seen.path))
            if shows:
                known.add((seen.org, task_id))
    assert not strangers, strangers
    assert all((org, t) in known for t, orgs in w.parties.items() for org in orgs)

    # Each organization the oracle names sees each of its markers somewhere.
    unseen = [
        (org, marker)
        for marker, (orgs, _records) in w.allowed.items()
        for org in orgs
        if (org, marker) not in shown
    ]
    assert not unseen, unseen

    # Every response that showed a marker left an AuditEvent naming the record it lives in.
    events: list[dict[str, Any]] = []
    url: str | None = "/fhir/AuditEvent?_count=1000"
    while url:
        page = (await client.get(url)).json()
        events += [e["resource"] for e in page.get("entry", [])]
        url = next(
            (link["url"] for link in page.get("link", []) if link["relation"] == "next"), None
        )
    named: dict[str, set[str]] = {}
    for event in events:
        entities = event.get("entity", [])
        request_ids = {(x.get("what") or {}).get("identifier", {}).get("value") for x in entities}
        refs = {
            str((x.get("what") or {}).get("reference", "")).split("/_history")[0] for x in entities
        }
        for rid in request_ids:
            if rid:
                named.setdefault(rid, set()).update(refs)
    unaudited = []
    for (org, marker), request_ids in shown.items():
        records = w.allowed[marker][1]
        for rid in request_ids:
            if not any(r.split("/_history")[0] in named.get(rid, set()) for r in records):
                unaudited.append((org, marker, rid))
    assert not unaudited, unaudited[:10]

    # Nothing was lost: the stored records still hold every marker.
    for marker, (_orgs, records) in w.allowed.items():
        texts = [(await client.get(f"/fhir/{r}")).text for r in records]
        assert any(marker in t for t in texts), marker
