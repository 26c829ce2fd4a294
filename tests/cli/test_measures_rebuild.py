"""``handoff measures rebuild``: the measure facts recomputed from the stored resources of an
existing database (rows written any other way are replaced)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from service.features.measures import facts
from service.settings import Settings
from service.storage.db import create_engine, write_transaction
from service.storage.migrate import upgrade
from service.storage.tables import measure_release


async def _count(url: str, *, seed: bool = False) -> int:
    engine = create_engine(Settings(database_url=url, _env_file=None))
    try:
        async with write_transaction(engine) as conn:
            if seed:  # a fact no stored resource backs: the rebuild drops it
                released = datetime.now(UTC) - timedelta(days=1)
                row = facts.release_row(
                    release_id="orphan",
                    patient="Patient/none",
                    booked_at=released - timedelta(days=2),
                    released_at=released,
                )
                await facts.bulk_insert(conn, [row])
            found = (await conn.execute(select(func.count()).select_from(measure_release))).scalar()
        return int(found or 0)
    finally:
        await engine.dispose()


def test_rebuild_recomputes_every_fact(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'handoff.db'}"
    upgrade(url)
    assert asyncio.run(_count(url, seed=True)) == 1
    done = subprocess.run(
        [sys.executable, "-m", "service", "measures", "rebuild", "--batch", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HANDOFF_DATABASE_URL": url},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"people": 0, "releases": 0, "referrals": 0, "events": 0}
    assert asyncio.run(_count(url)) == 0
