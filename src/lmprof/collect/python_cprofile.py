"""cProfile on request: exact call counts and self/cumulative times, saved as a `.pstats` file.

cProfile hooks every Python call and return, so it counts calls exactly but slows Python-
heavy code far more than sampling does; its overhead is measured like any collector's.
It sees only the thread that started it. It keeps caller->callee edges, not whole stacks,
so no flame graph is built from it: py-spy's flame is the one to read.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmprof.collect.python_sampler import PythonProfile, short_path


class CProfileCollector:
    """Start, stop, and get a `PythonProfile`; `save_pstats(path)` for pstats and snakeviz."""

    def __init__(
        self,
        pstats_path: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.pstats_path = Path(pstats_path) if pstats_path is not None else None
        self._clock = clock
        self._profiler = cProfile.Profile()
        self._start_s: float | None = None
        self._wall_s: float | None = None
        self._reason: str | None = None

    @property
    def reason(self) -> str | None:
        return self._reason

    def start(self) -> CProfileCollector:
        try:
            self._profiler.enable()
        except ValueError as exc:  # Python 3.12+: another profiler (sys.monitoring) already active
            self._reason = f"cProfile could not start: {exc}"
            return self
        self._start_s = self._clock()
        return self

    def stop(self) -> PythonProfile:
        profile = PythonProfile(sampler="cprofile", available=False)
        if self._start_s is None:
            profile.reason = self._reason or "the profiler was not started"
            return profile
        self._profiler.disable()
        self._wall_s = profile.wall_s = self._clock() - self._start_s
        self._start_s = None
        stats = pstats.Stats(self._profiler)
        profile.functions = function_table(stats.stats)  # type: ignore[attr-defined]
        profile.total_s = float(stats.total_tt)  # type: ignore[attr-defined]
        profile.available = True
        profile.notes.append("cProfile sees the thread that started it only")
        if self.pstats_path is not None:
            profile.pstats_file = str(self.save_pstats(self.pstats_path))
        return profile

    def save_pstats(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile in pstats' marshal format (`pstats.Stats(path)`, `snakeviz path`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._profiler.dump_stats(str(path))
        return path


def function_table(
    raw: dict[tuple[str, int, str], tuple[Any, ...]], roots: list[str] | None = None
) -> list[dict[str, Any]]:
    """pstats' {(file, line, name): (primitive calls, calls, self s, cumulative s, callers)} as rows."""
    rows = []
    for (file, line, name), (primitive_calls, calls, self_s, total_s, _callers) in raw.items():
        builtin = file == "~"  # pstats' marker for C functions: no source file, no line
        rows.append(
            {
                "name": name,
                "file": None if builtin else short_path(file, sys.path if roots is None else roots),
                "line": None if builtin else line,
                "calls": calls,
                "primitive_calls": primitive_calls,
                "self_s": float(self_s),
                "total_s": float(total_s),
            }
        )
    rows.sort(key=lambda r: (-r["self_s"], -r["total_s"], r["name"]))
    return rows
