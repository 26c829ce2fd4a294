"""Route logging through the service's JSON configuration for one test, then restore it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from service.logging_config import QUIET_LOGGERS, configure_logging
from service.settings import Settings

Level = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
_TOUCHED = ("", "uvicorn", "uvicorn.error", "uvicorn.access", *QUIET_LOGGERS)


class JsonLines:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@contextmanager
def json_logs(level: Level = "DEBUG") -> Iterator[JsonLines]:
    loggers = [logging.getLogger(name) for name in _TOUCHED]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    stream = io.StringIO()
    configure_logging(Settings(log_level=level, _env_file=None), stream=stream)  # type: ignore[call-arg]
    try:
        yield JsonLines(stream)
    finally:
        for lg, lvl, handlers, propagate, disabled in saved:
            lg.setLevel(lvl)
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.disabled = disabled
