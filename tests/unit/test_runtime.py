"""The server process's garbage-collector tuning."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.runtime import tune_garbage_collector
from service.settings import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_start_up_objects_frozen_and_young_generation_enlarged() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    tune_garbage_collector(Settings(_env_file=None, gc_gen0_threshold=40_000))
    assert gc.get_threshold() == (40_000, before[1], before[2])
    assert gc.get_freeze_count() > 1000  # the imported app's long-lived objects


@pytest.mark.usefixtures("restore_gc")
def test_zero_keeps_the_interpreters_defaults() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    tune_garbage_collector(Settings(_env_file=None, gc_gen0_threshold=0))
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restore_gc")
async def test_the_server_tunes_it_once_started(settings: Settings, engine: object) -> None:
    from service.app import create_app

    gc.unfreeze()
    app = create_app(settings.model_copy(update={"gc_gen0_threshold": 12_345}), engine=engine)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        assert gc.get_threshold()[0] == 12_345
        assert gc.get_freeze_count() > 0
