"""openapi/openapi.json is generated from the app; this fails when it is stale."""

from __future__ import annotations

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
