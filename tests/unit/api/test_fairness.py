"""One client's share of a process's concurrent requests."""

from __future__ import annotations

import pytest

from service.api.fairness import ClientConcurrency
from service.errors import TooManyRequestsError
from service.settings import Settings


def test_a_client_past_its_share_is_refused_while_others_are_not() -> None:
    slots = ClientConcurrency(2)
    slots.enter("a")
    slots.enter("a")
    with pytest.raises(TooManyRequestsError) as refused:
        slots.enter("a")
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "1"}
    assert "HANDOFF_MAX_CONCURRENT_PER_CLIENT" in refused.value.diagnostics
    slots.enter("b")
    slots.leave("a")
    slots.enter("a")
    assert (slots.held("a"), slots.held("b")) == (2, 1)
    for client in ("a", "a", "b"):
        slots.leave(client)
    assert (slots.held("a"), slots.held("b")) == (0, 0)


@pytest.mark.parametrize(
    ("pool", "overflow", "given", "limit"),
    [(10, 0, None, 8), (4, 2, None, 4), (2, 0, None, 1), (10, 0, 3, 3)],
)
def test_the_default_share_leaves_two_pooled_connections(
    pool: int, overflow: int, given: int | None, limit: int
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        db_pool_size=pool, db_max_overflow=overflow, max_concurrent_per_client=given, _env_file=None
    )
    assert settings.client_concurrency_limit == limit
