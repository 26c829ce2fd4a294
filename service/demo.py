"""Demo data for ``handoff serve --demo``: one county's warm-handoff network.

Seeding is idempotent (each resource is looked up by its demo identifier first), so restarting
the demo never duplicates anything. Every resource is tagged ``demo``. Ids are stable
(``Organization/demo-otp``, ``Location/demo-county-jail-site``, …) so that the request examples
in Swagger UI name real demo resources and work as they stand; a database seeded before ids
were stable keeps its own.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from service.fhir.service_codes import characteristic, service_coding
from service.storage.db import write_transaction
from service.workflows import resources as wf
from service.workflows.context import WorkflowContext

logger = logging.getLogger("handoff.demo")

DEMO_SYSTEM = "https://handoff.dev/fhir/demo"
DEMO_TAG = {"system": "https://handoff.dev/fhir/CodeSystem/tags", "code": "demo"}
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
BCP47 = "urn:ietf:bcp:47"

# key -> (name, organization type, services [(name, service codes, description, extras)]).
# Service codes are the referral vocabulary (fhir.service_codes), so a referral's service finds
# the demo providers that offer it (GET /v1/directory?service=moud-buprenorphine).
ORGANIZATIONS: dict[str, tuple[str, str, list[tuple[str, tuple[str, ...], str]]]] = {
    "county-jail": (
        "Riverbend County Jail",
        "govt",
        [("Reentry planning", ("case-management",), "Reentry planning and release coordination")],
    ),
    "jail-health": (
        "Riverbend County Jail Health Unit",
        "prov",
        [("MOUD in custody", ("moud",), "Medications for opioid use disorder in custody")],
    ),
    "otp": (
        "Harbor Opioid Treatment Program",
        "prov",
        [
            (
                "Methadone and buprenorphine",
                ("moud-methadone", "moud-buprenorphine"),
                "Opioid treatment program (MOUD continuation)",
            )
        ],
    ),
    "sud-treatment": (
        "Northside Recovery Services",
        "prov",
        [
            (
                "Outpatient SUD treatment and office-based buprenorphine",
                ("sud-treatment", "moud-buprenorphine", "moud-naltrexone"),
                "Outpatient substance use disorder care",
            )
        ],
    ),
    "harm-reduction": (
        "Riverbend Syringe Services Program",
        "cg",
        [
            (
                "Naloxone and syringe services",
                ("harm-reduction", "naloxone"),
                "Naloxone, syringe services",
            )
        ],
    ),
    "peer-support": (
        "Second Chance Recovery Community Organization",
        "cg",
        [("Peer recovery support", ("peer-support",), "Peer recovery coaching at release")],
    ),
}
# key -> (street, latitude, longitude, languages, accepting new patients): the demo county's
# sites, a few kilometres apart (the jail at 39.9612, -82.9988).
SITES: dict[str, tuple[str, float, float, tuple[str, ...], bool]] = {
    "county-jail": ("100 Main St", 39.9612, -82.9988, ("en",), True),
    "jail-health": ("100 Main St", 39.9612, -82.9988, ("en",), True),
    "otp": ("410 Harbor Rd", 39.9725, -82.9901, ("en", "es"), True),
    "sud-treatment": ("2200 Northside Ave", 40.0417, -83.0191, ("en", "es"), True),
    "harm-reduction": ("35 Canal St", 39.9523, -83.0105, ("en", "es"), True),
    "peer-support": ("77 Oak St", 39.9851, -82.9762, ("en",), False),
}
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
# The jail's second facility: (site key, name, street, latitude, longitude).
JAIL_ANNEX = (
    "county-jail-annex-site",
    "Riverbend County Jail North Annex",
    "900 River Rd",
    39.9901,
    -83.0022,
)


async def _seed(conn: Any, ctx: WorkflowContext, body: dict[str, Any], demo_key: str) -> str:
    """The id of the demo resource ``demo_key``: the one already stored under its demo
    identifier, or a new one at ``demo-<demo_key>`` (update-as-create)."""
    rtype = body["resourceType"]
    found = await wf.find_by_first_identifier(conn, ctx, rtype, [(DEMO_SYSTEM, demo_key)])
    if found:
        return found[0].id
    resource_id = f"demo-{demo_key}"
    await wf.update_in(conn, ctx, rtype, resource_id, {**body, "id": resource_id}, if_match=None)
    return resource_id


def _org(key: str, name: str, org_type: str) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "meta": {"tag": [DEMO_TAG]},
        "identifier": [{"system": DEMO_SYSTEM, "value": key}],
        "active": True,
        "type": [{"coding": [{"system": ORG_TYPE, "code": org_type}]}],
        "name": name,
        "telecom": [{"system": "phone", "value": "555-0100", "use": "work"}],
        "address": [
            {"line": ["100 Main St"], "city": "Riverbend", "state": "OH", "postalCode": "43001"}
        ],
    }


def _location(key: str, name: str, org_id: str) -> dict[str, Any]:
    street, lat, lon, _, _ = SITES[key]
    return {
        "resourceType": "Location",
        "meta": {"tag": [DEMO_TAG]},
        "identifier": [{"system": DEMO_SYSTEM, "value": f"{key}-site"}],
        "status": "active",
        "name": f"{name} main site",
        "address": {
            "line": [street],
            "city": "Riverbend",
            "state": "OH",
            "postalCode": "43001",
        },
        "position": {"latitude": lat, "longitude": lon},
        "managingOrganization": {"reference": f"Organization/{org_id}"},
    }


def _annex(jail_id: str) -> dict[str, Any]:
    site, name, street, lat, lon = JAIL_ANNEX
    return {
        "resourceType": "Location",
        "meta": {"tag": [DEMO_TAG]},
        "identifier": [{"system": DEMO_SYSTEM, "value": site}],
        "status": "active",
        "name": name,
        "address": {"line": [street], "city": "Riverbend", "state": "OH", "postalCode": "43001"},
        "position": {"latitude": lat, "longitude": lon},
        "managingOrganization": {"reference": f"Organization/{jail_id}"},
    }


def _service(
    key: str,
    index: int,
    org_id: str,
    location_id: str,
    service: tuple[str, tuple[str, ...], str],
) -> dict[str, Any]:
    name, service_codes, description = service
    _, _, _, languages, accepting = SITES[key]
    return {
        "resourceType": "HealthcareService",
        "meta": {"tag": [DEMO_TAG]},
        "identifier": [{"system": DEMO_SYSTEM, "value": f"{key}-service-{index}"}],
        "active": True,
        "providedBy": {"reference": f"Organization/{org_id}"},
        "type": [{"coding": [service_coding(code) for code in service_codes]}],
        "name": name,
        "comment": description,
        "location": [{"reference": f"Location/{location_id}"}],
        "telecom": [{"system": "phone", "value": "555-0100", "use": "work"}],
        "eligibility": [{"code": {"text": "Adults 18 and over"}}],
        "communication": [
            {"coding": [{"system": BCP47, "code": language}]} for language in languages
        ],
        "characteristic": [characteristic(accepting)],
        "availableTime": [
            {
                "daysOfWeek": WEEKDAYS,
                "availableStartTime": "08:00:00",
                "availableEndTime": "17:00:00",
            }
        ],
    }


# Fixed, clearly-marked demo credentials (printed at start-up and listed in the README).
# client id -> (organization key or None for the administrator, scopes)
DEMO_CLIENTS: dict[str, tuple[str | None, str]] = {
    "demo-jail": ("county-jail", "system/*.cruds"),
    "demo-jail-health": ("jail-health", "system/*.cruds"),
    "demo-otp": ("otp", "system/*.cruds"),
    "demo-treatment": ("sud-treatment", "system/*.cruds"),
    "demo-harm-reduction": ("harm-reduction", "system/*.cruds"),
    "demo-peer": ("peer-support", "system/*.cruds"),
    "demo-admin": (None, "system/*.cruds handoff/admin"),
}


def demo_secret(client_id: str) -> str:
    return f"{client_id}-secret"


async def seed_demo_clients(engine: Any, org_ids: dict[str, str]) -> list[dict[str, str]]:
    """Register the demo clients (secret authentication); idempotent."""
    from datetime import UTC, datetime

    from service.auth.client_secrets import hash_client_secret
    from service.storage.clients import ClientRecord, add_client, get_client

    listed = []
    async with write_transaction(engine) as conn:
        for client_id, (org_key, scopes) in DEMO_CLIENTS.items():
            org = f"Organization/{org_ids[org_key]}" if org_key else None
            if await get_client(conn, client_id) is None:
                await add_client(
                    conn,
                    ClientRecord(
                        client_id=client_id,
                        name=f"DEMO {ORGANIZATIONS[org_key][0] if org_key else 'administrator'}",
                        organization=org,
                        scopes=scopes,
                        secret_hash=hash_client_secret(demo_secret(client_id)),
                        jwks=None,
                        jwks_uri=None,
                        disabled=False,
                        created=datetime.now(UTC),
                    ),
                )
            listed.append(
                {
                    "client_id": client_id,
                    "client_secret": demo_secret(client_id),
                    "organization": org or "(none: administrator)",
                    "scopes": scopes,
                }
            )
    return listed


async def seed_demo(app: FastAPI) -> dict[str, str]:
    """Create the demo network; returns demo key -> Organization id."""
    ctx = WorkflowContext(
        engine=app.state.engine,
        settings=app.state.settings,
        base_url="",
        request_id="demo-seed",
        rules=app.state.rules,
    )
    org_ids: dict[str, str] = {}
    locations: dict[str, str] = {}  # site key -> Location id
    async with write_transaction(ctx.engine) as conn:
        for key, (name, org_type, services) in ORGANIZATIONS.items():
            org_id = await _seed(conn, ctx, _org(key, name, org_type), key)
            org_ids[key] = org_id
            site = f"{key}-site"
            location_id = await _seed(conn, ctx, _location(key, name, org_id), site)
            locations[site] = location_id
            for i, service in enumerate(services):
                body = _service(key, i, org_id, location_id, service)
                await _seed(conn, ctx, body, f"{key}-service-{i}")
        annex = _annex(org_ids["county-jail"])
        locations[JAIL_ANNEX[0]] = await _seed(conn, ctx, annex, JAIL_ANNEX[0])
    app.state.demo_organizations = org_ids
    clients = await seed_demo_clients(ctx.engine, org_ids)
    await seed_demo_subscription(app, org_ids)
    if app.state.settings.demo:  # not for tests that seed only the network
        from service.demo_history import seed_history

        app.state.demo_history = await seed_history(app, org_ids, locations, DEMO_CLIENTS)
    lines = "\n".join(
        f"  {c['client_id']:<22} secret {c['client_secret']:<29} {c['organization']}"
        for c in clients
    )
    # Demo credentials are public by design; log them so a newcomer can authorize at once.
    logger.warning("DEMO clients (for /docs -> Authorize, or POST /auth/token):\n%s", lines)
    logger.info("demo network ready: %d organizations", len(org_ids))
    return org_ids


DEMO_SUBSCRIPTION = "demo-otp-referrals"
DEMO_RECEIVER = "http://127.0.0.1:9000/notify"  # `handoff dev receiver --port 9000`


async def seed_demo_subscription(app: FastAPI, org_ids: dict[str, str]) -> None:
    """The treatment program's Subscription to the referral Tasks it owns, posting to the
    development receiver (README: Notifications). Made once, as the ``demo-otp`` client; a
    receiver that is not running puts it in ``error`` (PUT it again to reactivate)."""
    from service.auth.principal import Principal
    from service.auth.scopes import ScopeSet
    from service.features.subscriptions.spec import (
        BACKPORT,
        CONTENT_EXTENSION,
        FILTER_EXTENSION,
        HEARTBEAT_EXTENSION,
    )
    from service.features.subscriptions.topics import TASK_TOPIC
    from service.storage import repository as repo
    from service.workflows.access import access_filter, tenancy_filter

    settings = app.state.settings
    if not (settings.demo or settings.subscription_allow_local_http):
        return  # seeded without --demo (tests): the receiver's http:// endpoint is refused
    org = f"Organization/{org_ids['otp']}"
    base = (settings.public_base_url or "http://127.0.0.1:8000").rstrip("/") + "/fhir"
    principal = Principal(
        client_id="demo-otp",
        organization=org,
        scopes=ScopeSet.parse(DEMO_CLIENTS["demo-otp"][1]),
        is_admin=False,
        token_id=None,
        issuer="demo-seed",
    )
    ctx = WorkflowContext(
        engine=app.state.engine,
        settings=settings,
        base_url=base,
        request_id="demo-seed",
        principal=principal,
        access=access_filter(principal, "r", base_url=base),
        search_access=access_filter(principal, "s", base_url=base),
        write_access=tenancy_filter(principal),
        rules=app.state.rules,
    )
    body: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": DEMO_SUBSCRIPTION,
        "meta": {"profile": [f"{BACKPORT}/StructureDefinition/backport-subscription"]},
        "status": "requested",
        "reason": "DEMO: referral Tasks for Harbor Opioid Treatment Program",
        "criteria": TASK_TOPIC,
        "_criteria": {"extension": [{"url": FILTER_EXTENSION, "valueString": f"Task?owner={org}"}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": DEMO_RECEIVER,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": CONTENT_EXTENSION, "valueCode": "id-only"}]},
            "extension": [{"url": HEARTBEAT_EXTENSION, "valueUnsignedInt": 60}],
        },
    }
    async with write_transaction(ctx.engine) as conn:
        if await repo.get_current(conn, "Subscription", DEMO_SUBSCRIPTION) is None:
            await wf.update_in(conn, ctx, "Subscription", DEMO_SUBSCRIPTION, body, if_match=None)
            logger.warning(
                "DEMO subscription Subscription/%s posts to %s (run `handoff dev receiver "
                "--port 9000`)",
                DEMO_SUBSCRIPTION,
                DEMO_RECEIVER,
            )
