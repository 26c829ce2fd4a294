"""Program measures at county scale: every measure for a year, with every stratifier.

    python -m bench.measures                      # 50,000 releases, 150,000 referrals, a year
    python -m bench.measures --releases 5000      # smaller
    python -m bench.measures --tiny               # seconds; what the smoke test runs

PostgreSQL (a scratch database, as ``python -m bench``). The year of a large county system is
loaded straight into the measure fact tables (``measure_release``, ``measure_referral``,
``measure_event``) through the measures feature's bulk API (``facts.release_row`` … and
``facts.bulk_insert``): the measures are computed from those tables only, so the roughly one
million resources such a year stands for (people, stays, screenings, referrals and their Tasks,
appointments, contacts, kits) would change nothing the reports read, and loading them through
the API would take hours. Rows are deterministic (a seeded generator) and shaped like a real
program: 12 facilities, 40 receiving organizations, three referrals per release on average,
about 60 % of them accepted before release, first contacts from hours to weeks after release.

Then one API process (``handoff serve``) answers ``GET /v1/measures`` for the whole year with
all seven stratifiers: as the administrator (the full view), and as one receiving organization
(its own releases and referrals, small cells suppressed). Each is asked ``--repeat`` times after
one warm-up; printed: the median and the slowest answer, and the answer's size. Goal: ≤ 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.run import (
    Server,
    Tokens,
    scratch_database,
    service_command,
    service_settings,
    sqlalchemy_url,
)

ADMIN_PG = "postgresql://postgres@127.0.0.1:5432/test"
STRATIFIERS = "month,facility,intercept,sex,age_band,stay_length,release_type"
CATEGORIES = ("treatment", "harm-reduction", "peer-support")
MEASURES_SCOPE = "system/MeasureReport.read"


def _year() -> tuple[date, date]:
    """The twelve whole months before this one (computed from now: nothing rots)."""
    first_of_month = datetime.now(UTC).date().replace(day=1)
    end = first_of_month - timedelta(days=1)
    start = (end.replace(day=1) - timedelta(days=335)).replace(day=1)
    return start, end


def build_rows(
    releases: int, referrals_per_release: float, seed: int = 26
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Deterministic fact rows for one year; also the receiving organizations' references."""
    from service.features.measures import facts

    rng = random.Random(seed)
    start, end = _year()
    span = (
        datetime.combine(end, datetime.max.time(), UTC)
        - datetime.combine(start, datetime.min.time(), UTC)
    ).total_seconds()
    jail = "Organization/bench-county-jail"
    facilities = [f"Location/bench-facility-{i:02d}" for i in range(12)]
    providers = [f"Organization/bench-provider-{i:02d}" for i in range(40)]
    release_rows: list[dict[str, Any]] = []
    referral_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    base = datetime.combine(start, datetime.min.time(), UTC)
    for i in range(releases):
        released_at = base + timedelta(seconds=rng.uniform(0, span))
        stay = timedelta(
            hours=rng.choice((6, 20, 40, 70, 100, 300, 900, 2400)) * rng.uniform(0.5, 1.5)
        )
        booked_at = released_at - stay
        patient = f"Patient/bench-{i}"
        release_id = f"Encounter/bench-{i}"
        screened = rng.random() < 0.85
        contacted = rng.random() < 0.7
        treated = rng.random() < 0.4
        release_rows.append(
            facts.release_row(
                release_id=release_id,
                patient=patient,
                booked_at=booked_at,
                released_at=released_at,
                organization=jail,
                facility=rng.choice(facilities),
                intercept=rng.choice((2, 3, 3, 3, 4, 4, 5)),
                planned=rng.random() < 0.75,
                sex=rng.choice(("female", "male", "male", "male", "other", "unknown")),
                birth_date=date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 55)),
                at_risk=rng.random() < 0.8,
                screened_at=booked_at + timedelta(hours=rng.uniform(0, 96)) if screened else None,
                educated=rng.random() < 0.6,
                naloxone_in_hand=rng.random() < 0.55,
                first_contact_at=(
                    released_at + timedelta(hours=rng.expovariate(1 / 40)) if contacted else None
                ),
                treatment_started_at=(
                    released_at + timedelta(days=rng.uniform(0, 30)) if treated else None
                ),
                engaged=rng.random() < 0.6,
                deceased_at=released_at + timedelta(days=rng.uniform(1, 200))
                if rng.random() < 0.01
                else None,
                rebooked_at=released_at + timedelta(days=rng.uniform(5, 300))
                if rng.random() < 0.2
                else None,
            )
        )
        for _ in range(max(0, round(rng.gauss(referrals_per_release, 1.0)))):
            accepted = rng.random() < 0.65
            referral_rows.append(
                facts.referral_row(
                    referral_id=f"ServiceRequest/bench-{len(referral_rows)}",
                    release_id=release_id,
                    patient=patient,
                    released_at=released_at,
                    category=rng.choice(CATEGORIES),
                    intercept=3,
                    requester=jail,
                    performer=rng.choice(providers),
                    accepted_at=released_at - timedelta(hours=rng.uniform(-48, 240))
                    if accepted
                    else None,
                    status="accepted" if accepted else rng.choice(("requested", "rejected")),
                )
            )
        if rng.random() < 0.6:
            event_rows.append(
                facts.event_row(
                    event_id=f"MedicationDispense/bench-{i}",
                    kind="kit",
                    occurred_at=released_at - timedelta(minutes=30),
                    organization=jail,
                    facility=release_rows[-1]["facility"],
                    intercept=release_rows[-1]["intercept"],
                    quantity=rng.choice((1, 2, 2, 4)),
                )
            )
        if rng.random() < 0.01:
            event_rows.append(
                facts.event_row(
                    event_id=f"Observation/bench-reversal-{i}",
                    kind="reversal",
                    occurred_at=released_at + timedelta(days=rng.uniform(1, 60)),
                    organization=rng.choice(providers),
                )
            )
    return release_rows, referral_rows, event_rows, providers


async def _load(
    dsn: str, rows: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    from service.features.measures import facts
    from service.settings import Settings
    from service.storage.db import create_engine, write_transaction

    engine = create_engine(Settings(database_url=sqlalchemy_url(dsn), _env_file=None))
    try:
        async with write_transaction(engine) as conn:
            await facts.bulk_insert(conn, *rows)
        async with engine.connect() as conn:
            await conn.exec_driver_sql("COMMIT")
            for table in ("measure_release", "measure_referral", "measure_event"):
                await conn.exec_driver_sql(f"ANALYZE {table}")
    finally:
        await engine.dispose()


def _time(client: httpx.Client, url: str, token: str, repeat: int) -> tuple[list[float], int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    warm = client.get(url, headers=headers)
    warm.raise_for_status()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(url, headers=headers)
        times.append(time.perf_counter() - t0)
        response.raise_for_status()
    return times, len(warm.content), warm.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.measures", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--releases", type=int, default=50_000)
    parser.add_argument("--referrals-per-release", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="500 releases, 2 repeats")
    parser.add_argument("--admin-dsn", default=ADMIN_PG)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    opts = parser.parse_args(argv)
    if opts.tiny:
        opts.releases, opts.repeat = 500, 2
    from service.storage.migrate import upgrade

    with (
        scratch_database(opts.admin_dsn, keep=opts.keep) as dsn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        upgrade(sqlalchemy_url(dsn))
        t0 = time.perf_counter()
        releases, referrals, events, providers = build_rows(
            opts.releases, opts.referrals_per_release
        )
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        asyncio.run(_load(dsn, (releases, referrals, events)))
        loaded = time.perf_counter() - t0
        print(
            f"loaded {len(releases):,} releases, {len(referrals):,} referrals, {len(events):,} "
            f"kit/reversal events (built in {built:.1f} s, inserted in {loaded:.1f} s)"
        )
        tokens = Tokens(dsn)
        tokens.setup()
        provider = providers[0]
        tokens.register("bench-provider", provider, MEASURES_SCOPE)
        server = Server("measures", service_command(1), service_settings(dsn), Path(tmp))
        try:
            start, end = _year()
            url = f"{server.base}/v1/measures?from={start}&to={end}&stratify={STRATIFIERS}"
            with httpx.Client(timeout=120) as client:
                print(f"GET /v1/measures  {start} .. {end}, stratify={STRATIFIERS}")
                print(
                    f"{'view':<34}{'median s':>10}{'max s':>10}{'bytes':>10}"
                    f"{'measures':>10}{'strata':>9}"
                )
                for label, client_id in (
                    ("administrator (all, unsuppressed)", None),
                    ("one provider (suppressed)", "bench-provider"),
                ):
                    token = (
                        tokens.issue(server.base, client_id)
                        if client_id
                        else tokens.issue(server.base)
                    )
                    times, size, body = _time(client, url, token, opts.repeat)
                    strata = sum(len(m.get("strata", [])) for m in body["measures"])
                    print(
                        f"{label:<34}{statistics.median(times):>10.3f}{max(times):>10.3f}"
                        f"{size:>10,}{len(body['measures']):>10}{strata:>9}"
                    )
                print("goal: <= 2 s for every measure for the year with all strata")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
