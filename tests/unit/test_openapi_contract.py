"""openapi/openapi.json is generated from the app; this fails when it is stale."""

from __future__ import annotations

import json
from typing import Any

from service.openapi import OPENAPI_PATH, generate, render


def test_committed_openapi_matches_the_app() -> None:
    committed = OPENAPI_PATH.read_text(encoding="utf-8")
    assert committed == render(generate()), (
        "openapi/openapi.json is stale: run `python -m service.openapi` and commit the result"
    )


def test_every_fhir_operation_documents_operation_outcome_errors() -> None:
    schema = generate()
    for path, methods in schema["paths"].items():
        if not path.startswith("/fhir") or path.startswith("/fhir/.well-known"):
            continue  # .well-known is OAuth/SMART discovery, not a FHIR interaction
        for method, op in methods.items():
            responses = op["responses"]
            for status in ("400", "404"):
                assert status in responses, (method, path, status)


def test_tags_are_grouped_for_the_three_audiences() -> None:
    schema = generate()
    groups = {g["name"]: set(g["tags"]) for g in schema["x-tagGroups"]}
    assert len(groups) == 3
    used = {
        t for path in schema["paths"].values() for op in path.values() for t in op.get("tags", [])
    }
    assert set().union(*groups.values()) == used  # every tag in exactly one audience
    assert "JMS: referrals" in groups["Jail management systems (plain JSON)"]
    assert "FHIR Task" in groups["Providers and FHIR clients"]
    assert "Authorization" in groups["Integrators and administrators"]


def test_v1_routes_have_typed_bodies_with_examples() -> None:
    schema = generate()
    for path in ("/v1/referrals", "/v1/assessments", "/v1/consents"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        name = body["$ref"].rsplit("/", 1)[1]
        assert "example" in schema["components"]["schemas"][name], name


def test_the_document_stays_compact() -> None:
    """Datatypes, backbone elements and shared error answers are components referenced by
    every use: the document was 2.3 MB when each operation spelled out its errors."""
    assert len(render(generate())) < 1_600_000
    schema = generate()
    components = schema["components"]["schemas"]
    assert components["R4.HumanName"]["additionalProperties"] is False
    name = components["Patient"]["properties"]["name"]
    assert name == {
        "type": "array",
        "minItems": 1,
        "items": {"$ref": "#/components/schemas/R4.HumanName"},
    }
    assert schema["paths"]["/fhir/Task"]["post"]["responses"]["401"]["$ref"].startswith(
        "#/components/responses/"
    )


def test_links_name_operations_and_parameters_that_exist() -> None:
    """Links from a create (or a referral, a consent) to what can be done next name operations
    by id: renaming a route must not leave them pointing nowhere."""
    schema = generate()
    operations = {
        op["operationId"]: op
        for methods in schema["paths"].values()
        for op in methods.values()
        if isinstance(op, dict) and "operationId" in op
    }
    linked = 0
    for methods in schema["paths"].values():
        for op in methods.values():
            for response in op.get("responses", {}).values():
                for link in response.get("links", {}).values():
                    target = operations.get(link["operationId"])
                    assert target is not None, link
                    declared = {p["name"] for p in target.get("parameters", [])}
                    for name in link["parameters"]:
                        assert name.removeprefix("header.") in declared, (link, name)
                    linked += 1
    assert linked > 100  # every writable FHIR type's create, the referral, the consent
    assert "links" in operations["create_Task"]["responses"]["201"]


def _resolved(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return dict(components[schema["$ref"].rsplit("/", 1)[1]])
    return schema


def _problem(schema: dict[str, Any], components: dict[str, Any], media_type: str) -> str | None:
    """Why a response body's schema says too little to code against (None: it is fine)."""
    if media_type.startswith(("text/", "application/hl7-v2")):
        return None if schema.get("type") == "string" else "a text body that is not a string"
    if schema.get("type") == "array":
        if "items" not in schema:
            return "an array of anything"
        return _problem(schema["items"], components, media_type)
    named = _resolved(schema, components)
    if not named.get("properties"):
        return "no properties (a free-form object or no schema at all)"
    if named.get("additionalProperties") is True and "$ref" not in schema:
        return "a free-form object"
    if "$ref" in schema and "example" not in named and named["title"] != "OperationOutcome":
        return f"{named['title']} has no example"
    return None


def test_every_v1_response_has_a_schema_with_properties_and_an_example() -> None:
    """Swagger UI shows each answer of /v1 (successes and errors) as a model, not as
    "string" or ``{"additionalProp1": {}}``."""
    schema = generate()
    components = schema["components"]["schemas"]
    shared = schema["components"]["responses"]  # errors many operations document alike
    problems = []
    checked = 0
    for path, methods in schema["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, op in methods.items():
            for status, answer in op["responses"].items():
                response = shared.get(answer.get("$ref", "").rsplit("/", 1)[-1], answer)
                content = response.get("content")
                if status == "204":
                    assert not content, (method, path)
                    continue
                if not content:
                    problems.append(f"{method.upper()} {path} {status}: no content")
                for media_type, body in (content or {}).items():
                    found = _problem(body.get("schema") or {}, components, media_type)
                    checked += 1
                    if found:
                        problems.append(f"{method.upper()} {path} {status} {media_type}: {found}")
    assert not problems, "\n".join(problems)
    assert checked > 200


def test_swagger_ui_view_names_datatypes_and_leaves_the_contract_whole() -> None:
    from service.app import create_app
    from service.openapi_schemas import swagger_ui_view
    from service.settings import Settings

    app = create_app(Settings(_env_file=None, database_url="sqlite+aiosqlite:///:memory:"))  # type: ignore[call-arg]
    contract = app.openapi()
    before = json.dumps(contract, sort_keys=True)
    view = swagger_ui_view(contract)
    assert json.dumps(contract, sort_keys=True) == before  # the published contract is untouched
    components = view["components"]["schemas"]
    complex_names = {n for n, c in components.items() if n.startswith("R4.") and "properties" in c}

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            own = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
            return own.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    # No element leads on to a complex datatype's schema: Swagger UI inlines one level only.
    for name, component in components.items():
        assert not refs(component.get("properties", {})) & complex_names, name
    task = components["Task"]["properties"]
    assert task["for"]["description"].startswith("R4.Reference")
    post = view["paths"]["/fhir/Task"]["post"]["requestBody"]["content"]["application/fhir+json"]
    assert post["example"] == {"resourceType": "Task"}
