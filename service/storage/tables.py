"""Table definitions (SQLModel), shared by the repository and by Alembic.

- ``resource``: the current version of every resource (JSON as stored, plus JSONB for ad-hoc SQL
  except for AuditEvents).
- ``resource_history``: every version, in a gap-free change order (``seq``, ``txid``).
- ``search_index``: one row per search-parameter value of every version (token, reference,
  string, date, number, uri), so search is a set of index probes on both dialects.
- ``subscription_state``, ``subscription_event``, ``subscription_cursor``: notification
  delivery (features.subscriptions, storage.subscriptions).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from service.storage.types import AutoBigInt, JsonDocument, UtcDateTime


class Resource(SQLModel, table=True):
    __tablename__ = "resource"
    __table_args__ = (Index("ix_resource_type_updated", "resource_type", "last_updated", "id"),)

    resource_type: str = Field(sa_column=Column(String(64), primary_key=True))
    id: str = Field(sa_column=Column(String(64), primary_key=True))
    version_id: int = Field(nullable=False)
    last_updated: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    deleted: bool = Field(default=False, nullable=False)
    # The JSON text exactly as served (client body + id + meta): reads never re-encode.
    raw: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    content: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JsonDocument, nullable=True)
    )


class ResourceHistory(SQLModel, table=True):
    __tablename__ = "resource_history"
    __table_args__ = (
        UniqueConstraint("resource_type", "id", "version_id", name="uq_history_version"),
        Index("ix_history_type_txid_seq", "resource_type", "txid", "seq"),
        Index("ix_history_txid_seq", "txid", "seq"),
    )

    # Change position: assigned at insert; ``txid`` (PostgreSQL transaction id, 0 on SQLite)
    # fences readers so that a late commit can never fall behind a cursor (see search/feed).
    seq: int | None = Field(default=None, sa_column=Column(AutoBigInt, primary_key=True))
    txid: int = Field(default=0, sa_column=Column(AutoBigInt, nullable=False))
    resource_type: str = Field(sa_column=Column(String(64), nullable=False))
    id: str = Field(sa_column=Column(String(64), nullable=False))
    version_id: int = Field(nullable=False)
    last_updated: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    method: str = Field(sa_column=Column(String(8), nullable=False))
    deleted: bool = Field(default=False, nullable=False)
    raw: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))


# One row per search-parameter value of every version. A plain table without a primary key:
# nothing addresses a single row (rows are found by value, by version, or by date), and a
# surrogate key cost ~3.3 µs of PostgreSQL time per row written (measured: a provider's page
# AuditEvent writes ~107 rows) and an index as large as the rest of the row's keys.
#
# Five secondary indexes, each for one way in (every index costs each row written):
# - ix_search_feed: rows of one parameter value (driving equality searches, reference
#   look-ups) in commit order (the change feed walks them from a cursor);
# - ix_search_system_value: token ``system|code`` and identifier look-ups (rows that have a
#   system only);
# - ix_search_low / ix_search_high: date ranges from below (lt, le, sa) and from above
#   (gt, ge, eb), date rows only (the only rows without a ``value``);
# - ix_search_resource: one version's rows (per-row probes of search, tenancy and consent
#   conditions). It leads with ``resource_id`` on purpose: no other index does, so the
#   planner cannot prefer a walk over every row of a type whose statistics lag behind its
#   growth (measured: the referral benchmark's look-ups walked every ServiceRequest).
search_index = Table(
    "search_index",
    SQLModel.metadata,
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer(), nullable=False),
    Column("param", String(64), nullable=False),
    # token: system|code; reference: "Type/id"; string: normalised text (``system``: as
    # written, for ``:exact``); uri: exact; date: [low, high] instant range; number: ``number``.
    Column("system", String(255), nullable=True),
    Column("value", String(512), nullable=True),
    Column("low", UtcDateTime(), nullable=True),
    Column("high", UtcDateTime(), nullable=True),
    Column("number", Float(), nullable=True),
    # Change position of the version these values belong to (copied from resource_history).
    Column("txid", AutoBigInt, nullable=False),
    Column("seq", AutoBigInt, nullable=False),
    Index("ix_search_feed", "resource_type", "param", "value", "txid", "seq"),
    Index(
        "ix_search_system_value",
        "resource_type",
        "param",
        "system",
        "value",
        postgresql_where=text("system IS NOT NULL"),
        sqlite_where=text("system IS NOT NULL"),
    ),
    Index(
        "ix_search_low",
        "resource_type",
        "param",
        "low",
        postgresql_where=text("value IS NULL"),
        sqlite_where=text("value IS NULL"),
    ),
    Index(
        "ix_search_high",
        "resource_type",
        "param",
        "high",
        postgresql_where=text("value IS NULL"),
        sqlite_where=text("value IS NULL"),
    ),
    Index("ix_search_resource", "resource_id", "version_id", "param", "value"),
)


class IdempotencyRecord(SQLModel, table=True):
    """The first response to an ``Idempotency-Key`` per client, replayed on retries."""

    __tablename__ = "idempotency_record"
    # Expired responses are purged in batches by age.
    __table_args__ = (Index("ix_idempotency_created", "created"),)

    client_id: str = Field(sa_column=Column(String(128), primary_key=True))
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    status_code: int = Field(nullable=False)
    body: str = Field(sa_column=Column(Text(), nullable=False))
    created: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    # JSON [[type, id, version], ...]: what the first response named (written or read), so
    # that a replay's AuditEvent names what it discloses again. NULL on rows before 0009.
    shown: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))


metadata = SQLModel.metadata


class OAuthClient(SQLModel, table=True):
    """A registered backend client (``handoff clients add``)."""

    __tablename__ = "oauth_client"

    client_id: str = Field(sa_column=Column(String(128), primary_key=True))
    name: str = Field(sa_column=Column(String(255), nullable=False))
    organization: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    scopes: str = Field(sa_column=Column(Text(), nullable=False))
    secret_hash: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    jwks: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(), nullable=True))
    jwks_uri: str | None = Field(default=None, sa_column=Column(String(1024), nullable=True))
    disabled: bool = Field(default=False, nullable=False)
    created: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class UsedAssertion(SQLModel, table=True):
    """``jti`` values of client assertions already used (replay protection, all replicas)."""

    __tablename__ = "used_assertion"
    __table_args__ = (Index("ix_used_assertion_expires", "expires_at"),)

    client_id: str = Field(sa_column=Column(String(128), primary_key=True))
    jti: str = Field(sa_column=Column(String(255), primary_key=True))
    expires_at: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class SigningKeyRingRow(SQLModel, table=True):
    """The token-signing key ring when no key file is mounted: one row, shared by replicas."""

    __tablename__ = "signing_key_ring"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    ring: dict[str, Any] = Field(sa_column=Column(JSON(), nullable=False))
    updated: datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


# --- notifications (features.subscriptions; queries in storage.subscriptions) ----------------

# One row per subscription: what the delivery worker needs, its event
# counter and its delivery lease. Written with the Subscription's versions (same transaction).
subscription_state = Table(
    "subscription_state",
    SQLModel.metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # "fhir": a FHIR Subscription; "webhook"
    Column("organization", String(128), nullable=True),
    # The client the worker reads as, with the scopes it held when it last wrote the record.
    Column("client_id", String(128), nullable=False),
    Column("scopes", Text(), nullable=False),
    Column("spec", JSON(), nullable=False),  # topic, filters, channel (features.subscriptions)
    Column("status", String(16), nullable=False),  # requested | active | error | off
    Column("generation", Integer(), nullable=False),  # +1 on every client write
    Column("events_count", BigInteger(), nullable=False),  # events-since-subscription-start
    Column("delivered_through", BigInteger(), nullable=False),  # last event sent (or skipped)
    Column("failures", Integer(), nullable=False),  # consecutive failed attempts
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("last_sent_at", UtcDateTime(), nullable=True),  # heartbeats count from here
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UtcDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
    Index("ix_subscription_state_due", "status", "next_attempt_at"),
)

# Every event of every subscription, numbered per subscription (gap-free), kept for $events
# for ``HANDOFF_SUBSCRIPTION_EVENT_RETENTION_HOURS``.
subscription_event = Table(
    "subscription_event",
    SQLModel.metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("event_number", BigInteger(), primary_key=True),
    Column("recorded", UtcDateTime(), nullable=False),
    Column("focus_type", String(64), nullable=False),
    Column("focus_id", String(64), nullable=False),
    Column("focus_version", Integer(), nullable=False),
    Column("context", JSON(), nullable=True),  # additional-context references
    Column("event_type", String(64), nullable=True),  # a webhook's: referral.accepted, ...
    Index("ix_subscription_event_recorded", "recorded"),
)

# How far the change feed has been matched against subscriptions: one row, locked by the
# worker that advances it (FOR UPDATE SKIP LOCKED).
subscription_cursor = Table(
    "subscription_cursor",
    SQLModel.metadata,
    Column("name", String(32), primary_key=True),
    Column("txid", BigInteger(), nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("scanned_at", UtcDateTime(), nullable=True),  # the last release-imminent scan
)


# --- program measures (features.measures): facts kept current by a write rule ----------------

# One row per recorded release of a custody stay (the Encounter), with what the measures count
# about it, recomputed from the person's stored resources on every write that can change them.
measure_release = Table(
    "measure_release",
    SQLModel.metadata,
    Column("release_id", String(64), primary_key=True),  # the Encounter's id
    Column("patient", String(128), nullable=False),  # Patient/<id>
    Column("organization", String(128), nullable=True),  # the jail (serviceProvider)
    Column("facility", String(128), nullable=True),
    Column("intercept", String(8), nullable=True),  # of the stay's first referral
    Column("booked_at", UtcDateTime(), nullable=False),
    Column("released_at", UtcDateTime(), nullable=False),
    Column("release_month", String(7), nullable=False),  # YYYY-MM of released_at (UTC)
    Column("release_type", String(16), nullable=False),  # planned | unplanned
    Column("stay_length", String(16), nullable=False),  # under-72h | 72h-or-more
    Column("stay_hours", Float(), nullable=False),
    Column("sex", String(16), nullable=False),
    Column("age_band", String(16), nullable=False),
    Column("at_risk", Integer(), nullable=False),  # 0/1 (integers: SUM on both dialects)
    Column("screened_at", UtcDateTime(), nullable=True),
    Column("screened_24h", Integer(), nullable=False),
    Column("screened_72h", Integer(), nullable=False),
    Column("educated", Integer(), nullable=False),
    Column("naloxone_in_hand", Integer(), nullable=False),
    Column("first_contact_at", UtcDateTime(), nullable=True),
    Column("contact_hours", Float(), nullable=True),
    Column("contacted_24h", Integer(), nullable=False),
    Column("contacted_72h", Integer(), nullable=False),
    Column("treatment_started_at", UtcDateTime(), nullable=True),
    Column("treatment_14d", Integer(), nullable=False),
    Column("engaged_34d", Integer(), nullable=False),
    Column("deceased_at", UtcDateTime(), nullable=True),
    Column("rebooked_at", UtcDateTime(), nullable=True),
    Column("rebooked_12m", Integer(), nullable=False),
    # From the release's referrals (all parties): the administrator's view reads these; an
    # organization's view recomputes them from the referrals it is a party to.
    Column("referred", Integer(), nullable=False),
    Column("a_treatment", Integer(), nullable=False),  # accepted before release, by category
    Column("a_harm", Integer(), nullable=False),
    Column("a_peer", Integer(), nullable=False),
    Column("a_any", Integer(), nullable=False),
    Index("ix_measure_release_released", "released_at"),
    Index("ix_measure_release_patient", "patient"),
    Index("ix_measure_release_org", "organization", "released_at"),
)

# One row per referral (ServiceRequest) of a recorded release.
measure_referral = Table(
    "measure_referral",
    SQLModel.metadata,
    Column("referral_id", String(64), primary_key=True),  # the ServiceRequest's id
    Column("release_id", String(64), nullable=False),
    Column("patient", String(128), nullable=False),
    Column(
        "category", String(16), nullable=False
    ),  # treatment | harm-reduction | peer-support | other
    Column("intercept", String(8), nullable=True),
    Column("requester", String(128), nullable=True),
    Column("performer", String(128), nullable=True),
    Column("accepted_at", UtcDateTime(), nullable=True),
    Column("accepted_before_release", Integer(), nullable=False),
    Column("status", String(32), nullable=False),
    Index("ix_measure_referral_release", "release_id", "category"),
    Index("ix_measure_referral_requester", "requester"),
    Index("ix_measure_referral_performer", "performer"),
    Index("ix_measure_referral_patient", "patient"),
)

# One row per naloxone kit record or reported overdose reversal (count measures).
measure_event = Table(
    "measure_event",
    SQLModel.metadata,
    Column("event_id", String(160), primary_key=True),  # <type>/<id> of the record
    Column("kind", String(16), nullable=False),  # kit | reversal
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("month", String(7), nullable=False),
    Column("organization", String(128), nullable=True),  # the organization that recorded it
    Column("facility", String(128), nullable=True),
    Column("intercept", String(8), nullable=True),
    Column("quantity", Float(), nullable=False),
    Index("ix_measure_event_kind_at", "kind", "occurred_at"),
)
