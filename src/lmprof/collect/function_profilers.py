"""The function-level profiler of a `--deep` session (py-spy or cProfile), and its cost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PSTATS_FILE = "profile.pstats"


def make_python_profiler(name: str, clock: Callable[[], float] | None = None) -> Any:
    """The function-level profiler: py-spy (sampling, low cost) or cProfile (exact counts).

    `clock` (the session's) is the one py-spy's time-stamped samples are placed on."""
    if name == "py-spy":
        from lmprof.collect.python_sampler import PySpySampler

        return PySpySampler(rate_hz=100) if clock is None else PySpySampler(rate_hz=100, clock=clock)
    if name == "cprofile":
        from lmprof.collect.python_cprofile import CProfileCollector

        return CProfileCollector()
    raise ValueError(f"unknown python profiler {name!r}")


def measure_python_profiler_cost(name: str) -> dict[str, Any]:
    """The profiler's cost, measured on a calibration workload: paired runs with and without
    it, in this process (a collector's last act, before the session derives its figures)."""
    from lmprof.collect.overhead import measure_slowdown

    cost = measure_slowdown(_calibration_workload, lambda: make_python_profiler(name), repeats=3)
    cost["method"] = (
        "calibration: a fixed Python + small-matmul loop timed with and without the profiler, paired"
    )
    cost["distorts"] = ["every phase's wall time, by about this factor on Python-heavy work"]
    return cost


def add_python_profile(deep: Any, profile: Any, name: str, cost: dict[str, Any] | None) -> None:
    """Put a PythonProfile into the deep record, with its measured cost (None when the profiler
    was not available, so nothing was profiled and nothing measured)."""
    deep.python = profile.to_record()
    if profile.flame is not None and profile.flame.stacks:
        deep.flames.append(profile.flame)
    if not profile.available:
        deep.notes.append(f"no Python function profile: {profile.reason}")
        return
    if cost is not None:
        deep.overhead[name] = cost
        deep.python["slowdown"] = cost["slowdown"]


def _calibration_workload() -> None:
    # Python-heavy like generate's loop: many small tensor ops with Python between them.
    import torch

    x = torch.ones(64, 64)
    total = 0.0
    for i in range(400):
        x = torch.tanh(x @ x * 0.01)
        total += float(i % 7)
