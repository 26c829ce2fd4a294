"""Cost of validate_resource on a ~2 KB Task, next to plain R4B model_validate.

    PYTHONPATH=. python bench/validate_task.py [runs]

Prints the median µs per call of each, over ``runs`` calls (default 5,000) after a warm-up.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import orjson

from service.fhir.r4 import model_for
from service.fhir.validate import validate_resource
from tests.unit.fhir.samples import task


def median_us(fn: Callable[[], object], runs: int) -> float:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    raw = orjson.dumps(task())
    body = orjson.loads(raw)
    model = model_for("Task")
    print(f"Task: {len(raw)} bytes, {runs} runs, median µs/call")
    print(f"  orjson.loads                {median_us(lambda: orjson.loads(raw), runs):8.1f}")
    print(
        f"  Task.model_validate         {median_us(lambda: model.model_validate(body), runs):8.1f}"
    )
    print(
        "  validate_resource           "
        f"{median_us(lambda: validate_resource(body, expected_type='Task'), runs):8.1f}"
    )


if __name__ == "__main__":
    main()
