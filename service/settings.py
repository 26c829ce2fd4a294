"""Typed settings from ``HANDOFF_*`` environment variables (and an optional ``.env``).

No module-level instance: ``get_settings()`` caches one, tests build ``Settings(...)`` directly.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./handoff.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HANDOFF_", env_file=".env", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    auto_migrate: bool = Field(
        False, description="On PostgreSQL, apply migrations at start-up (SQLite always does)."
    )
    db_pool_size: int = Field(10, ge=1, description="Connections per replica (PostgreSQL).")
    # Overflow connections are opened and closed again per burst (a PostgreSQL backend start
    # each time): under sustained load beyond the pool, queueing for a pooled one is cheaper.
    db_max_overflow: int = Field(0, ge=0, description="Extra connections under bursts.")
    db_pool_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")
    max_concurrent_per_client: int | None = Field(
        None,
        ge=1,
        description="Requests one client may have in progress at once, per process (429 past "
        "it). Unset: the connection pool's size (with overflow) less 2, at least 1.",
    )
    db_statement_timeout_ms: int = Field(
        10_000,
        ge=0,
        description="Longest a database statement may run, in milliseconds (0: no limit). A "
        "request whose statement is stopped is answered 400: it asked too much.",
    )
    db_ping_after_idle: float = Field(
        10.0,
        ge=0,
        description="Ping a pooled connection before use if it sat idle this many seconds "
        "(0: before every use).",
    )
    public_base_url: str | None = Field(
        None,
        description="Public URL of the service (e.g. https://handoff.example.org). When unset, "
        "links are built from the request (honouring X-Forwarded-* from trusted proxies).",
    )
    trusted_proxies: str = Field(
        "127.0.0.1",
        description="Comma-separated proxy addresses whose X-Forwarded-* headers are trusted "
        "('*' trusts all).",
    )
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_url_bytes: int = Field(
        8192, ge=1024, description="Longest request URL (path and query), in bytes."
    )
    max_header_bytes: int = Field(
        16384, ge=1024, description="Largest request headers, all of them together, in bytes."
    )
    gc_gen0_threshold: int = Field(
        50_000,
        ge=0,
        description="Python's cyclic garbage collector: allocations between collections of its "
        "youngest generation (the interpreter's default is 700); what start-up built is frozen "
        "out of collections. 0 leaves the interpreter's defaults.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    demo: bool = Field(False, description="Seed demo organizations and clients on start-up.")
    demo_history_months: int = Field(
        12,
        ge=0,
        le=24,
        description="Months of demo history (bookings, releases, referrals, appointments, "
        "contacts, naloxone) `serve --demo` seeds, ending now; 0 seeds none.",
    )
    default_page_size: int = Field(50, ge=1, le=1000)
    max_page_size: int = Field(1000, ge=1)

    # --- what one request may cost (a request over a limit is refused, naming the limit) -----
    search_max_params: int = Field(
        30,
        ge=1,
        description="Distinct parameters in one search (a parameter repeated with the same "
        "value counts once; result parameters such as _count count too).",
    )
    search_max_repeats: int = Field(
        5, ge=1, description="Distinct criteria on one search parameter (status=a&status=b: 2)."
    )
    search_max_values: int = Field(
        100, ge=1, description="Comma-separated values of one search parameter."
    )
    search_max_includes: int = Field(
        12,
        ge=1,
        description="_include and _revinclude paths of one search (a wildcard counts every "
        "parameter it stands for).",
    )
    search_max_included: int = Field(
        1000,
        ge=1,
        description="Resources one search page includes; the rest are left out, with a warning.",
    )
    bundle_max_entries: int = Field(
        100, ge=1, description="Entries of one transaction or batch Bundle."
    )
    idempotency_retention_hours: int = Field(
        24,
        ge=1,
        description="Hours the first response to an Idempotency-Key is kept and replayed; after "
        "that the key may be used again (kept responses hold patient data).",
    )
    naloxone_max_quantity: int = Field(
        50, ge=1, description="Most naloxone kits one record may give (larger is refused)."
    )
    measures_min_cell: int = Field(
        11,
        ge=1,
        description="Program measures: counts from 1 to this minus one are suppressed (shown as "
        "'<11' by default, the CMS small-cell convention) in every report but the "
        "administrator's own full view.",
    )

    # --- authorization -----------------------------------------------------------------------
    token_lifetime_seconds: int = Field(
        300, ge=30, le=300, description="Access token lifetime (SMART: at most 5 minutes)."
    )
    auth_signing_keys_file: str | None = Field(
        None,
        description="JWKS file of private token-signing keys (e.g. a mounted Secret). Unset: a "
        "key ring kept in the database, shared by every replica.",
    )
    auth_issuer: str | None = Field(
        None, description="An external identity provider's issuer (e.g. a Keycloak realm URL)."
    )
    auth_jwks_url: str | None = Field(None, description="JWKS URL of the external issuer.")
    auth_audience: str | None = Field(
        None, description="Audience external tokens must carry (default: the FHIR base URL)."
    )
    auth_client_claim: str = Field("azp", description="External token claim naming the client.")
    auth_organization_claim: str = Field(
        "handoff_org",
        description="External token claim holding the client's Organization reference.",
    )
    auth_allow_insecure_jwks: bool = Field(
        False, description="Allow http:// jwks_uri (development only)."
    )
    worklist_max_referrals: int = Field(
        2000,
        ge=1,
        description="Most referrals one JMS worklist (GET /v1/referrals) lists; a release window "
        "holding more is refused with 422, asking for a narrower one.",
    )
    adt_timezone: str = Field(
        "UTC",
        description="IANA time zone of HL7 v2 ADT date/times sent without an offset "
        "(e.g. America/Chicago for a jail whose JMS sends local times).",
    )
    post_release_referral_days: int = Field(
        30,
        ge=0,
        le=365,
        description="How many days after a recorded release a referral for that custody stay "
        "is still accepted (POST /v1/referrals with booking_number).",
    )
    referral_metrics_max_age: float = Field(
        30.0, gt=0, description="Seconds the referral-count gauge reuses its last query."
    )

    # --- dashboard (/dashboard): people sign in with the organization's OpenID provider ------
    oidc_issuer: str | None = Field(
        None,
        description="OpenID Connect issuer the dashboard signs people in with (its "
        "/.well-known/openid-configuration is read). Unset: no OIDC sign-in (--demo offers a "
        "demo sign-in).",
    )
    oidc_client_id: str | None = Field(None, description="The dashboard's client id there.")
    oidc_client_secret: SecretStr | None = Field(
        None, description="The dashboard's client secret there (confidential client)."
    )
    oidc_scope: str = Field("openid profile email", description="Scopes the dashboard asks for.")
    oidc_organization_claim: str = Field(
        "handoff_organization",
        description="ID-token claim naming the user's Organization (id or Organization/<id>).",
    )
    oidc_role_claim: str = Field(
        "handoff_role",
        description="ID-token claim with the user's dashboard role: program-manager (sees its "
        "organization's measures) or admin (sees all).",
    )
    dashboard_session_secret: SecretStr | None = Field(
        None,
        description="Key signing the dashboard's session cookie. Unset: a random key per "
        "process (sessions end at restart and are not shared between workers).",
    )
    dashboard_session_hours: int = Field(
        8, ge=1, le=24 * 7, description="How long a dashboard sign-in lasts."
    )

    # --- notifications (FHIR Subscriptions) ---------------------------------------------------
    subscription_worker: bool = Field(
        True,
        description="Run the notification delivery worker inside `handoff serve` (SQLite always "
        "does; on PostgreSQL it may run as `handoff worker` instead: `handoff serve --no-worker`).",
    )
    subscription_allow_local_http: bool = Field(
        False,
        description="Development only: accept http:// notification endpoints on 127.0.0.1 or "
        "localhost (every other endpoint must be https://). `handoff serve --demo` turns it on.",
    )
    subscription_poll_seconds: float = Field(
        0.5, gt=0, description="How often the worker looks for new changes and due deliveries."
    )
    subscription_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Longest one delivery attempt may take (a Subscription's backport-timeout "
        "may ask for less, never more).",
    )
    subscription_max_failures: int = Field(
        5,
        ge=1,
        description="Consecutive failed deliveries after which a subscription is put in the "
        "error state (the client reactivates it by updating it).",
    )
    subscription_retry_seconds: float = Field(
        2.0, gt=0, description="First retry delay after a failed delivery (doubles each time)."
    )
    subscription_retry_max_seconds: float = Field(
        300.0, gt=0, description="Longest delay between two delivery attempts."
    )
    subscription_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="How long a worker holds a subscription beyond the delivery timeout; a "
        "worker that dies mid-delivery gives it up after this.",
    )
    subscription_event_retention_hours: int = Field(
        168,
        ge=1,
        description="Hours each notification event is kept for $events (recovery of missed "
        "notifications); event numbers keep counting after events are purged.",
    )
    subscription_max_events_per_notification: int = Field(
        20, ge=1, description="Most events one notification carries (backport-max-count: fewer)."
    )
    subscription_concurrency: int = Field(
        16, ge=1, description="Deliveries one worker process makes at once."
    )
    subscription_release_scan_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the worker looks for referrals whose release is imminent "
        "and for follow-up contacts whose window passed (overdue).",
    )

    @field_validator("adt_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. America/Chicago)") from None
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def client_concurrency_limit(self) -> int:
        if self.max_concurrent_per_client is not None:
            return self.max_concurrent_per_client
        return max(1, self.db_pool_size + self.db_max_overflow - 2)


@lru_cache
def get_settings() -> Settings:
    return Settings()
