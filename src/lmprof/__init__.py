"""lmprof: where an LLM inference run's time and memory go.

import lmprof
with lmprof.profile() as run:
    pipe = pipeline("text-generation", model=...)
    pipe("...", max_new_tokens=64)
run.save("out/")
"""

from __future__ import annotations

from typing import Any

from lmprof._version import __version__

__all__ = ["__version__", "profile", "load_run"]


def profile(
    *,
    sample_interval_s: float = 0.010,
    device: str | None = None,
    deep: bool = False,
    python_profiler: str | None = None,
    **settings: Any,
):
    """A profiling session for the code in the `with` block (see `ProfileSession`).

    deep=True traces the first generate call with torch.profiler (operators, modules,
    flame graphs, memory by kind); python_profiler="py-spy" or "cprofile" adds a
    function-level profile of the whole block."""
    from lmprof.session import ProfileSession

    return ProfileSession(
        sample_interval_s=sample_interval_s,
        device=device,
        settings=settings,
        deep=deep,
        python_profiler=python_profiler,
    )


def load_run(location: str):
    """Read a saved Run from a run folder or a run.json file."""
    from lmprof.record.run import load_run as _load

    return _load(location)
