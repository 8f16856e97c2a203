"""The Python functions behind each gap row: where py-spy's time-stamped samples fall in a
parent phase's own time (inside it, outside all its children), or outside every top-level
phase for "(unattributed)", the functions that took most of them.

Pure: a Run and the profiled thread's stacks (`lmprof.collect.py_spy_timeline`) in, names out.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures

from lmprof.collect.py_spy_timeline import Frame, StackSpan, Timeline
from lmprof.collect.python_sampler import short_path
from lmprof.record.run import Run

TOP_FUNCTIONS = 3

Window = tuple[float, float]

_LMPROF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")  # src/lmprof/
_LMPROF_ENTRY = (os.path.join(_LMPROF_DIR, "cli", ""), os.path.join(_LMPROF_DIR, "__main__.py"))
_THREADING = (threading.__file__, os.path.join(os.path.dirname(futures.__file__), ""))


def is_plumbing(frame: Frame) -> bool:
    """lmprof's own code, or the interpreter's threading machinery (threading.py,
    concurrent.futures): frames that stand between a user's function and the work it asked for."""
    file = frame[1]
    return file.startswith(_LMPROF_DIR) or file == _THREADING[0] or file.startswith(_THREADING[1])


def is_lmprof_entry(frame: Frame) -> bool:
    """lmprof's command line (`lmprof profile`, `lmprof run`): what it calls is the work."""
    return frame[1].startswith(_LMPROF_ENTRY)


def named_frame(
    frames: Sequence[Frame],
    plumbing: Callable[[Frame], bool] = is_plumbing,
    entry: Callable[[Frame], bool] = is_lmprof_entry,
) -> Frame:
    """The frame a sample is counted for: its innermost frame, passing over lmprof's own
    frames and the threading machinery's where they would hide the user's function.

    Left alone, a user's function that waits on a thread would be named `Condition.wait`, and
    one that calls a C function lmprof instrumented would be named lmprof's wrapper: so the
    innermost frame that is neither counts. Only frames above lmprof's command line are looked
    at (under it are the interpreter's start-up and the `lmprof` script, nobody's function).
    Where every frame above it is lmprof's or the threading machinery's (lmprof's own work,
    under `lmprof profile`), the innermost frame counts as it is, so that time is named as
    lmprof's. The price: lmprof's bookkeeping at a phase boundary, called from a user's
    function, is counted for that function."""
    start = max((i + 1 for i, f in enumerate(frames) if entry(f)), default=0)
    for frame in reversed(frames[start:]):
        if not plumbing(frame):
            return frame
    return frames[-1]


def gap_windows(run: Run, parents: Iterable[str | None]) -> dict[str | None, list[Window]]:
    """For each parent name, the session-time windows of its own time: every phase of that
    name, less its direct children; None: the run less its top-level phases. Sorted, disjoint."""
    children: dict[int | None, list[int]] = {}
    for i, p in enumerate(run.phases):
        children.setdefault(p.parent_index, []).append(i)
    run_start_s = min([0.0] + [p.start_s for p in run.phases])
    out: dict[str | None, list[Window]] = {}
    for parent in parents:
        if parent is None:
            spans = [(run_start_s, run_start_s + run.wall_s, children.get(None, []))]
        else:
            spans = [
                (p.start_s, p.end_s, children.get(i, []))
                for i, p in enumerate(run.phases)
                if p.name == parent
            ]
        windows: list[Window] = []
        for start_s, end_s, kids in spans:
            windows += _subtract(
                (start_s, end_s), [(run.phases[k].start_s, run.phases[k].end_s) for k in kids]
            )
        out[parent] = _merge(windows)
    return out


def sample_times(span: StackSpan, interval_s: float) -> list[float]:
    """When the span's samples were taken: py-spy stamps only the first sample of a stack
    (and the next stack's), so the span's round(length / interval) samples are spread evenly
    over it, each in the middle of the interval it stands for."""
    length = span.end_s - span.start_s
    n = max(1, round(length / interval_s))
    return [span.start_s + (i + 0.5) * length / n for i in range(n)]


def samples_by_function(
    spans: Sequence[StackSpan], windows: Sequence[Window], interval_s: float, margin_s: float = 0.0
) -> Counter[Frame]:
    """How many samples fall inside the windows, by the frame each is counted for.

    A sample counts only where it is inside a window by more than `margin_s`, the error of
    its session time: one nearer an edge may belong to the phase on the other side (a child's
    last samples, say), and is left out rather than named for the wrong phase."""
    counts: Counter[Frame] = Counter()
    starts = [w[0] for w in windows]
    for span in spans:
        if not span.frames:
            continue
        for t in sample_times(span, interval_s):
            i = bisect.bisect_right(starts, t) - 1  # the window that starts last before t
            if i >= 0 and windows[i][0] + margin_s <= t < windows[i][1] - margin_s:
                counts[named_frame(span.frames)] += 1
    return counts


def top_functions(counts: Counter[Frame], roots: Sequence[str], top: int = TOP_FUNCTIONS) -> list[str]:
    """The `top` functions by samples, as "share name (file:line)", the share of the windows'
    samples; files relative to their import root, as the function table names them."""
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [f"{n / total:.0%} {name} ({_where(file, line, roots)})" for (name, file, line), n in ranked]


def add_gap_functions(run: Run, timeline: Timeline, roots: Sequence[str]) -> None:
    """Fill `functions` (and `samples`, how many they come from) of each of `run.phase_gaps`
    whose own time the timeline's samples reach."""
    windows = gap_windows(run, {g["parent"] for g in run.phase_gaps})
    for gap in run.phase_gaps:
        counts = samples_by_function(
            timeline.spans, windows[gap["parent"]], timeline.interval_s, timeline.offset_error_s
        )
        if counts:
            gap["functions"] = top_functions(counts, roots)
            gap["samples"] = sum(counts.values())


def _where(file: str, line: int, roots: Sequence[str]) -> str:
    where = short_path(file, roots)
    return f"{where}:{line}" if line else where


def _subtract(window: Window, holes: Iterable[Window]) -> list[Window]:
    out, cursor = [], window[0]
    for lo, hi in sorted(holes):
        if lo > cursor:
            out.append((cursor, min(lo, window[1])))
        cursor = max(cursor, hi)
    if cursor < window[1]:
        out.append((cursor, window[1]))
    return [(lo, hi) for lo, hi in out if hi > lo]


def _merge(windows: list[Window]) -> list[Window]:
    merged: list[Window] = []
    for lo, hi in sorted(windows):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged
