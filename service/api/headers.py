"""Request headers the FHIR and /v1 routes share, documented as the server checks them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

from service.workflows.idempotency import MAX_KEY_LENGTH

# What idempotency.check_key accepts: printable characters (as a header arrives, Latin-1), with
# no space at either end (HTTP strips it). The workflow answers anything else with a 400.
_PRINTABLE = "!-~\u00a1-\u00ac\u00ae-\u00ff"
IDEMPOTENCY_KEY_PATTERN = f"^[{_PRINTABLE}]([ {_PRINTABLE}]*[{_PRINTABLE}])?$"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Makes a retry safe: the same key (from the same client, for the same "
        "request) answers with what the first request created, never a second copy. Kept "
        "HANDOFF_IDEMPOTENCY_RETENTION_HOURS (24).",
        json_schema_extra={
            "maxLength": MAX_KEY_LENGTH,
            "minLength": 1,
            "pattern": IDEMPOTENCY_KEY_PATTERN,
        },
    ),
]
