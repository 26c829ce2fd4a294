"""The service directory: FHIR search (chaining, near, subsumption, characteristic), the
accepting-new-patients flag its provider keeps, and GET /v1/directory."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.builders import (
    DIRECTORY_CHARACTERISTIC,
    FHIR_JSON,
    SERVICE_CODES,
    healthcare_service,
    location,
    organization,
)

# The jail, and sites at known distances from it.
JAIL = (39.9612, -82.9988)


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    (p1, l1), (p2, l2) = (tuple(math.radians(x) for x in p) for p in (a, b))
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin((l2 - l1) / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"/fhir/{body['resourceType']}", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return r.json()


async def ids(client: httpx.AsyncClient, path: str, **params: Any) -> set[str]:
    r = await client.get(f"/fhir/{path}", params=params)
    assert r.status_code == 200, r.text
    return {
        e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"
    }


async def network(client: httpx.AsyncClient) -> dict[str, str]:
    """Three providers: near (1.6 km, buprenorphine, accepting, Spanish), far (~9 km,
    buprenorphine, accepting) and full (0.9 km, buprenorphine, not accepting)."""
    out: dict[str, str] = {}
    for key, name, city, (lat, lon), accepting, languages in (
        ("near", "Harbor OTP", "Riverbend", (39.9725, -82.9901), True, ("en", "es")),
        ("far", "Northside Recovery", "Lakeview", (40.0417, -83.0191), True, ("en",)),
        ("full", "Canal Clinic", "Riverbend", (39.9530, -82.9940), False, ("es",)),
    ):
        org = await create(client, organization(name, identifier=key))
        loc = await create(
            client,
            location(
                f"{name} site",
                city=city,
                lat=lat,
                lon=lon,
                organization=f"Organization/{org['id']}",
            ),
        )
        svc = await create(
            client,
            healthcare_service(
                f"{name} MOUD",
                provided_by=f"Organization/{org['id']}",
                locations=(f"Location/{loc['id']}",),
                accepting=accepting,
                languages=languages,
                services=("moud-buprenorphine", "moud-methadone")
                if key == "near"
                else ("moud-buprenorphine",),
            ),
        )
        out[key], out[f"{key}-org"], out[f"{key}-loc"] = svc["id"], org["id"], loc["id"]
    return out


async def test_chained_search(client: httpx.AsyncClient) -> None:
    n = await network(client)
    assert await ids(client, "HealthcareService", **{"location.address-city": "Lakeview"}) == {
        n["far"]
    }
    assert await ids(client, "HealthcareService", **{"organization.name": "Canal"}) == {n["full"]}
    assert await ids(
        client, "HealthcareService", **{"location:Location.address-city": "riverbend"}
    ) == {n["near"], n["full"]}
    # Two hops: the service's location's managing organization.
    assert await ids(
        client, "HealthcareService", **{"location.organization.name": "Northside"}
    ) == {n["far"]}
    # Chains AND with the other criteria.
    assert await ids(
        client,
        "HealthcareService",
        **{"location.address-city": "Riverbend", "organization.name": "Harbor"},
    ) == {n["near"]}
    assert await ids(client, "HealthcareService", **{"organization.name": "Nobody"}) == set()


async def test_chain_errors(client: httpx.AsyncClient) -> None:
    for name, where in (
        ("name.city", "not a reference parameter"),
        ("location.nonsense", "Unknown search parameter"),
        ("location:Patient.name", "does not refer to Patient"),
        ("location.organization.partof.name", "at most 2"),
    ):
        r = await client.get(
            "/fhir/HealthcareService",
            params={name: "x", "_handling": "strict"},
            headers={"Prefer": "handling=strict"},
        )
        assert r.status_code == 400, (name, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
        assert where in r.text, (name, r.text)


async def test_chain_follows_only_what_the_caller_sees(
    client: httpx.AsyncClient, org_client: Any
) -> None:
    """A chain never follows a reference to what the caller may not see: jail-b's
    ServiceRequest names jail-a's patient, whose name jail-b must not be able to probe."""
    from tests.builders import patient

    jail_a = await org_client("Organization/jail-a")
    jail_b = await org_client("Organization/jail-b")
    r = await jail_a.post("/fhir/Patient", json=patient(family="Secretname"), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    patient_id = r.json()["id"]
    sr = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "requester": {"reference": "Organization/jail-b"},
        "code": {"text": "peer support"},
    }
    r = await jail_b.post("/fhir/ServiceRequest", json=sr, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    sr_id = r.json()["id"]
    assert await ids(jail_b, "ServiceRequest", subject=f"Patient/{patient_id}") == {sr_id}
    assert await ids(jail_b, "ServiceRequest", **{"subject:Patient.family": "Secretname"}) == set()
    assert await ids(jail_a, "ServiceRequest", **{"subject:Patient.family": "Secretname"}) == set()
    assert await ids(client, "ServiceRequest", **{"subject:Patient.family": "Secretname"}) == {
        sr_id
    }
    # Referrals' parts are disclosed apart (Part 2): no chain leads into them.
    r = await jail_b.get(
        "/fhir/Task",
        params={"focus:ServiceRequest.code": "x"},
        headers={"Prefer": "handling=strict"},
    )
    assert r.status_code == 400, r.text
    assert "chaining into ServiceRequest is not supported" in r.text
    # A feed (_cursor) cannot apply a chain: said, not ignored.
    r = await client.get(
        "/fhir/HealthcareService",
        params={"location.address-city": "x", "_cursor": "start"},
        headers={"Prefer": "handling=strict"},
    )
    assert r.status_code == 400, r.text


async def test_near_with_distance_and_units(client: httpx.AsyncClient) -> None:
    n = await network(client)
    lat, lon = JAIL
    assert await ids(client, "Location", near=f"{lat}|{lon}|2|km") == {n["near-loc"], n["full-loc"]}
    assert await ids(client, "Location", near=f"{lat}|{lon}|1|km") == {n["full-loc"]}
    assert await ids(client, "Location", near=f"{lat}|{lon}|1.2|mi") == {
        n["near-loc"],
        n["full-loc"],
    }
    assert await ids(client, "Location", near=f"{lat}|{lon}|10|km") == {
        n["near-loc"],
        n["full-loc"],
        n["far-loc"],
    }
    # No distance: the server's default (50 km); the other side of the world is not near.
    assert len(await ids(client, "Location", near=f"{lat}|{lon}")) == 3
    assert await ids(client, "Location", near=f"{-lat}|{lon + 180}|100|km") == set()
    # Chained from the service.
    assert await ids(client, "HealthcareService", **{"location.near": f"{lat}|{lon}|1|km"}) == {
        n["full"]
    }
    for bad in ("91|0|1|km", "abc|0", f"{lat}|{lon}|5|furlongs", f"{lat}|{lon}|-1|km", "1"):
        r = await client.get("/fhir/Location", params={"near": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["issue"][0]["expression"] == ["near"]


async def test_vocabulary_subsumption(client: httpx.AsyncClient, instruments: None) -> None:
    org = await create(client, organization("Generic MOUD", identifier="g"))
    generic = await create(
        client,
        healthcare_service("Any MOUD", provided_by=f"Organization/{org['id']}", services=("moud",)),
    )
    n = await network(client)
    bup = {n["near"], n["far"], n["full"]}
    assert await ids(client, "HealthcareService", **{"service-type": "moud-buprenorphine"}) == bup
    assert await ids(client, "HealthcareService", **{"service-type:below": "moud"}) == {
        *bup,
        generic["id"],
    }
    assert await ids(
        client, "HealthcareService", **{"service-type:below": f"{SERVICE_CODES}|moud-methadone"}
    ) == {n["near"]}
    assert await ids(
        client, "HealthcareService", **{"service-type:above": "moud-buprenorphine"}
    ) == {*bup, generic["id"]}
    assert await ids(client, "HealthcareService", **{"service-type": "moud"}) == {generic["id"]}
    # The published vocabulary says the same: moud is-a parent of the medications.
    r = await client.get("/fhir/CodeSystem/referral-service")
    cs = r.json()
    assert cs["hierarchyMeaning"] == "is-a"
    moud = next(c for c in cs["concept"] if c["code"] == "moud")
    assert {c["code"] for c in moud["concept"]} == {
        "moud-methadone",
        "moud-buprenorphine",
        "moud-naltrexone",
    }
    r = await client.get("/fhir/ValueSet/service-type")
    assert r.json()["compose"]["include"][0]["system"] == SERVICE_CODES
    # A misspelt service type is refused: no referral would ever find it.
    bad = healthcare_service(provided_by=f"Organization/{org['id']}", services=("moud-bupe",))
    r = await client.post("/fhir/HealthcareService", json=bad, headers=FHIR_JSON)
    assert r.status_code == 422
    assert "moud-bupe" in r.text


async def test_characteristic_language_and_eligibility(client: httpx.AsyncClient) -> None:
    n = await network(client)
    accepting = f"{DIRECTORY_CHARACTERISTIC}|accepting-new-patients"
    assert await ids(client, "HealthcareService", characteristic=accepting) == {n["near"], n["far"]}
    assert await ids(client, "HealthcareService", communication="es") == {n["near"], n["full"]}
    r = await client.get(f"/fhir/HealthcareService/{n['near']}")
    body = r.json()
    body["eligibility"] = [{"code": {"text": "Adults released from custody"}, "comment": "No fee"}]
    body["availableTime"] = [
        {
            "daysOfWeek": ["mon", "tue"],
            "availableStartTime": "06:00:00",
            "availableEndTime": "14:00:00",
        }
    ]
    r = await client.put(f"/fhir/HealthcareService/{n['near']}", json=body, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert await ids(client, "HealthcareService", **{"eligibility:contains": "custody"}) == {
        n["near"]
    }
    r = await client.get(f"/fhir/HealthcareService/{n['near']}")
    assert r.json()["availableTime"][0]["availableStartTime"] == "06:00:00"


def flag(body: dict[str, Any], accepting: bool) -> dict[str, Any]:
    code = "accepting-new-patients" if accepting else "not-accepting-new-patients"
    out = {k: v for k, v in body.items() if k != "meta"}
    out["characteristic"] = [{"coding": [{"system": DIRECTORY_CHARACTERISTIC, "code": code}]}]
    return out


async def test_accepting_flag_is_changed_only_by_its_provider(
    client: httpx.AsyncClient, org_client: Any
) -> None:
    n = await network(client)
    owner = await org_client(f"Organization/{n['near-org']}")
    stranger = await org_client(f"Organization/{n['far-org']}")
    current = (await owner.get(f"/fhir/HealthcareService/{n['near']}")).json()
    # FHIR: its provider may change the flag...
    r = await owner.put(
        f"/fhir/HealthcareService/{n['near']}", json=flag(current, False), headers=FHIR_JSON
    )
    assert r.status_code == 200, r.text
    # ...and nothing else of the entry...
    renamed = {**flag(r.json(), True), "name": "Something else"}
    r = await owner.put(f"/fhir/HealthcareService/{n['near']}", json=renamed, headers=FHIR_JSON)
    assert r.status_code == 403, r.text
    # ...while another organization may change nothing.
    current = (await owner.get(f"/fhir/HealthcareService/{n['near']}")).json()
    r = await stranger.put(
        f"/fhir/HealthcareService/{n['near']}", json=flag(current, True), headers=FHIR_JSON
    )
    assert r.status_code == 403, r.text
    patch = [
        {
            "op": "replace",
            "path": "/characteristic/0/coding/0/code",
            "value": "accepting-new-patients",
        }
    ]
    r = await stranger.patch(
        f"/fhir/HealthcareService/{n['near']}",
        json=patch,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 403, r.text
    r = await owner.patch(
        f"/fhir/HealthcareService/{n['near']}",
        json=patch,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 200, r.text
    # /v1: the same rule.
    r = await stranger.put(
        f"/v1/directory/services/{n['near']}/accepting", json={"accepting": False}
    )
    assert r.status_code == 403, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    r = await owner.put(f"/v1/directory/services/{n['near']}/accepting", json={"accepting": False})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "healthcare_service": f"HealthcareService/{n['near']}",
        "accepting_new_patients": False,
    }
    accepting = f"{DIRECTORY_CHARACTERISTIC}|accepting-new-patients"
    assert await ids(client, "HealthcareService", characteristic=accepting) == {n["far"]}
    r = await owner.put(f"/v1/directory/services/{n['near']}/accepting", json={"accepting": "yes"})
    assert r.status_code == 422
    assert r.json()["resourceType"] == "OperationOutcome"
    r = await owner.put("/v1/directory/services/missing/accepting", json={"accepting": True})
    assert r.status_code == 404


async def test_v1_directory_finds_nearest_accepting_buprenorphine(
    client: httpx.AsyncClient, org_client: Any
) -> None:
    n = await network(client)
    jail = await org_client("Organization/jail-a")
    lat, lon = JAIL
    r = await jail.get(
        "/v1/directory",
        params={
            "service": "moud-buprenorphine",
            "near": f"{lat},{lon}",
            "within_km": 20,
            "accepting": "true",
        },
    )
    assert r.status_code == 200, r.text
    found = r.json()
    assert [e["healthcare_service"] for e in found] == [
        f"HealthcareService/{n['near']}",
        f"HealthcareService/{n['far']}",
    ]
    first = found[0]
    assert first["organization"] == f"Organization/{n['near-org']}"
    assert first["organization_name"] == "Harbor OTP"
    assert first["accepting_new_patients"] is True
    assert abs(first["distance_km"] - haversine_km(JAIL, (39.9725, -82.9901))) < 0.01
    assert first["sites"][0]["location"] == f"Location/{n['near-loc']}"
    assert found[1]["distance_km"] > first["distance_km"]
    # Closer in, and in Spanish.
    r = await jail.get(
        "/v1/directory",
        params={"service": "moud", "near": f"{lat},{lon}", "within_km": 5, "language": "es"},
    )
    assert [e["healthcare_service"] for e in r.json()] == [
        f"HealthcareService/{n['full']}",
        f"HealthcareService/{n['near']}",
    ]
    r = await jail.get("/v1/directory", params={"service": "moud-methadone"})
    assert [e["healthcare_service"] for e in r.json()] == [f"HealthcareService/{n['near']}"]
    # Inactive entries are not offered.
    body = (await client.get(f"/fhir/HealthcareService/{n['near']}")).json()
    body["active"] = False
    assert (
        await client.put(f"/fhir/HealthcareService/{n['near']}", json=body, headers=FHIR_JSON)
    ).status_code == 200
    r = await jail.get("/v1/directory", params={"service": "moud-methadone"})
    assert r.json() == []


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"service": "moud-bupe"}, "service"),
        ({"near": "north"}, "near"),
        ({"near": "95,10"}, "near"),
        ({"within_km": "5"}, "within_km"),
        ({"near": "39.9,-83", "within_km": "0"}, "within_km"),
        ({"language": "Spanish!"}, "language"),
        ({"limit": "0"}, "limit"),
    ],
)
async def test_v1_directory_bad_input(
    client: httpx.AsyncClient, params: dict[str, str], where: str
) -> None:
    r = await client.get("/v1/directory", params=params)
    assert r.status_code == 422, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert where in r.text
