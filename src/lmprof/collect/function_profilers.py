"""The function-level profiler of a `--deep` session (py-spy or cProfile), and its cost."""

from __future__ import annotations

from typing import Any

PSTATS_FILE = "profile.pstats"


def make_python_profiler(name: str) -> Any:
    """The function-level profiler: py-spy (sampling, low cost) or cProfile (exact counts)."""
    if name == "py-spy":
        from lmprof.collect.python_sampler import PySpySampler

        return PySpySampler(rate_hz=100)
    if name == "cprofile":
        from lmprof.collect.python_cprofile import CProfileCollector

        return CProfileCollector()
    raise ValueError(f"unknown python profiler {name!r}")


def add_python_profile(deep: Any, profile: Any, name: str) -> None:
    """Put a PythonProfile into the deep record, with its cost measured on a calibration
    workload (paired runs with and without the profiler, in this process)."""
    from lmprof.collect.overhead import measure_slowdown

    deep.python = profile.to_record()
    if profile.flame is not None and profile.flame.stacks:
        deep.flames.append(profile.flame)
    if not profile.available:
        deep.notes.append(f"no Python function profile: {profile.reason}")
        return
    cost = measure_slowdown(_calibration_workload, lambda: make_python_profiler(name), repeats=3)
    cost["method"] = (
        "calibration: a fixed Python + small-matmul loop timed with and without the profiler, paired"
    )
    cost["distorts"] = ["every phase's wall time, by about this factor on Python-heavy work"]
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
