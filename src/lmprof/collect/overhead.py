"""What a collector costs: the same work timed with and without it.

The runs are paired and their order alternates, so a machine that gets busier or quieter
during the measurement shifts both sides alike; medians keep one disturbed run from
deciding the figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol


class Collector(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> Any: ...


def measure_slowdown(
    workload: Callable[[], None],
    collector_factory: Callable[[], Collector],
    repeats: int = 3,
    *,
    warmup: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Median wall time of `workload` alone and under a fresh collector, and their ratio.

    Only the workload is timed: the collector's start (py-spy attaching) and stop (writing
    its file) are one-off costs outside the work it slows down.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    if warmup:
        workload()
    baseline_s: list[float] = []
    profiled_s: list[float] = []
    for i in range(repeats):
        order = (False, True) if i % 2 == 0 else (True, False)
        for profiled in order:
            if profiled:
                collector = collector_factory()
                collector.start()
                try:
                    profiled_s.append(_timed(workload, clock))
                finally:
                    collector.stop()
            else:
                baseline_s.append(_timed(workload, clock))
    base, prof = statistics.median(baseline_s), statistics.median(profiled_s)
    return {"baseline_s": base, "profiled_s": prof, "slowdown": slowdown(base, prof), "repeats": repeats}


def _timed(workload: Callable[[], None], clock: Callable[[], float]) -> float:
    start = clock()
    workload()
    return clock() - start


def slowdown(baseline_s: float, profiled_s: float) -> float | None:
    """How many times longer the work took under the profiler (1.0 = no cost)."""
    if baseline_s <= 0:
        return None
    return profiled_s / baseline_s
