"""Per-client fairness: no client holds more than its share of this process's requests.

Each request of an authenticated client takes one of the client's slots for as long as its
handler runs (``deps.get_context`` takes it, ``deps.AuditedRoute`` gives it back); past the
limit the request is refused with 429 and ``Retry-After``. Slots are counted per process, in
memory: every replica, and every worker of one, counts its own. The default leaves two pooled
connections that one client's requests can never hold, so that other clients, the audit
group commit and ``/readyz`` always find one.
"""

from __future__ import annotations

from service.errors import TooManyRequestsError

RETRY_AFTER_SECONDS = 1


class ClientConcurrency:
    """Requests in progress per client id."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: dict[str, int] = {}

    def enter(self, client_id: str) -> None:
        """Take a slot for ``client_id``, or raise 429 if it holds them all."""
        held = self._active.get(client_id, 0)
        if held >= self.limit:
            raise TooManyRequestsError(
                f"This client already has {held} requests in progress, its limit on this "
                f"server (HANDOFF_MAX_CONCURRENT_PER_CLIENT): retry after {RETRY_AFTER_SECONDS} s, "
                "or send fewer requests at once",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._active[client_id] = held + 1

    def leave(self, client_id: str) -> None:
        held = self._active.get(client_id, 0) - 1
        if held > 0:
            self._active[client_id] = held
        else:
            self._active.pop(client_id, None)

    def held(self, client_id: str) -> int:
        return self._active.get(client_id, 0)
