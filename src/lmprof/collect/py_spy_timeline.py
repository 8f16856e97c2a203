"""Timestamped Python stacks of one thread, from py-spy's chrome trace: what lets a
"(rest of X)" row name the Python functions that took its time.

py-spy's speedscope file (the flame graph and the function table) has no time on its
samples. Its chrome trace has, but it is not a list of samples: consecutive samples with the
same stack become one begin/end span, and where idle samples are dropped a span runs on over
the idle time to the thread's next active sample, so neither form can replace the other.
The timeline therefore comes from a second py-spy (nonblocking: it never pauses the process)
writing a chrome trace with idle samples kept (`--idle`): every sample of the thread is then
inside a span, and a span is exactly the samples between two changes of stack, to one
sampling interval. Keeping idle samples is what wall-time gap rows need: a wait (a disk read,
a lock, a sleep) is named by the Python function that waited.

The clock: py-spy stamps its events in microseconds since its own start, on a monotonic clock
whose origin lmprof cannot read. Just before py-spy is stopped, the profiled thread sleeps
through `clock_mark`: steps of irregular length, one frame deeper each step, every switch
timed on the session clock. py-spy's first sample in a step was taken no earlier than the
step began (a firm bound: a stamp can be late, never early) and no later than it ended; each
step gives such a pair of bounds on the offset, and the tightest of them fix it, to within
`Timeline.offset_error_s` (half the span they leave: 1-4 ms at 100 Hz on this 2-core machine,
where a single mark gave ±5 ms and was off by more whenever py-spy sampled late). Both clocks are CLOCK_MONOTONIC
on Linux (perf_counter; Rust's Instant), so one offset serves the whole run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmprof.collect.py_spy_process import STOP_TIMEOUT_S, last_line, read_text, spawn_recorder

Frame = tuple[str, str, int]  # (function, file as Python compiled it, line of its def)

# The clock mark's steps, in sampling intervals: irregular, so that py-spy's samples fall at a
# different point of each step and one of them comes soon after its step began (12 in all).
MARK_STEPS = (1.3, 1.7, 1.1, 1.9, 1.5, 1.2, 1.8, 1.4)


@dataclass(frozen=True)
class StackSpan:
    """One stack held by the thread from start_s to end_s (session clock), root first: the
    samples that saw it, each standing for the sampling interval around it."""

    start_s: float
    end_s: float
    frames: tuple[Frame, ...]


@dataclass
class Timeline:
    """The profiled thread's stacks over the run, with how well they sit on the session clock."""

    spans: list[StackSpan]
    interval_s: float  # between samples: a span of d seconds holds about d / interval_s of them
    offset_error_s: float  # a sample's session time is right to within this


def clock_mark(clock: Callable[[], float], interval_s: float) -> list[float]:
    """Sleep through the mark's steps, timed on `clock`: when each began, and when the last ended.

    Sleeps, not busy loops: with idle samples kept the sleeping thread's stack still ends in
    the mark, and the mark costs no CPU."""
    switches = [clock()]
    _mark_step(clock, [n * interval_s for n in MARK_STEPS], switches)
    return switches


def _mark_step(clock: Callable[[], float], steps_s: list[float], switches: list[float]) -> None:
    # one frame deeper each step: the depth of this frame in a sample says which step it is in
    time.sleep(steps_s[0])
    switches.append(clock())
    if len(steps_s) > 1:
        _mark_step(clock, steps_s[1:], switches)


_MARK = (clock_mark.__name__, clock_mark.__code__.co_filename)
_STEP = (_mark_step.__name__, _mark_step.__code__.co_filename)


class TimelineRecorder:
    """The timeline py-spy: started once the sampling py-spy has attached, marked and stopped
    just before it; never raises, and says in a note what became of the timeline."""

    def __init__(self, py_spy: Path, rate_hz: int, out_dir: Path, clock: Callable[[], float]) -> None:
        self._py_spy, self._rate_hz, self._dir, self._clock = py_spy, rate_hz, out_dir, clock
        self._proc: subprocess.Popen[bytes] | None = None
        self._mark: list[float] | None = None
        self.note: str | None = None

    def start(self) -> TimelineRecorder:
        args = [
            "--rate", str(self._rate_hz), "--format", "chrometrace",
            "--output", str(self._dir / "timeline.json"), "--function", "--idle", "--nonblocking",
        ]  # fmt: skip
        self._proc, failure = spawn_recorder(self._py_spy, args, self._dir / "timeline.log")
        if failure is not None:
            self.note = f"no time-stamped samples, so the gap rows name no functions: {failure}"
        return self

    def mark_and_stop(self) -> None:
        """Mark the session clock in the trace, then ask py-spy to write it (Ctrl-C)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._mark = clock_mark(self._clock, 1 / self._rate_hz)
        self._proc.send_signal(signal.SIGINT)

    def read(self) -> Timeline | None:
        """The timeline, once py-spy has written it (None, with a note, where it could not)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill(proc)
        try:
            events = json.loads((self._dir / "timeline.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            events = None
        timeline = None
        if self._mark is not None and isinstance(events, list):
            timeline = timeline_from_chrometrace(events, self._mark, 1 / self._rate_hz)
        if timeline is not None:
            self.note = (
                "gap rows' functions: a second py-spy's time-stamped samples (idle kept), placed on the "
                f"session clock to within {timeline.offset_error_s * 1e3:.1f} ms"
            )
            return timeline
        if self._mark is not None and isinstance(events, list):
            why = "no sample fell in its clock mark"
        else:
            why = last_line(read_text(self._dir / "timeline.log")) or "it wrote no trace"
        self.note = f"the timeline py-spy left no usable trace ({why}): the gap rows name no functions"
        return None

    def kill(self) -> None:
        """Stop without reading (the run's profile failed)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()


def timeline_from_chrometrace(
    events: Sequence[dict[str, Any]], mark: Sequence[float], interval_s: float
) -> Timeline | None:
    """The stacks of the thread that ran `clock_mark` (the one that stopped the profiler: the
    session's thread), on the clock `mark` (its switch times) was read from. None when no
    sample fell in the mark, so the stacks cannot be placed in time."""
    tid = next((e.get("tid") for e in events if e.get("ph") == "B" and _key(e) == _MARK), None)
    if tid is None:
        return None
    raw = _spans_us(e for e in events if e.get("tid") == tid and e.get("ph") in ("B", "E"))
    found = _clock_offset(raw, mark, interval_s)
    if found is None:
        return None
    offset_s, error_s = found
    # A span runs from the first sample that saw its stack to the first that did not, so the
    # change itself came up to an interval earlier: each sample stands for the half interval
    # either side of it, and the spans move back by half an interval.
    shift_s = offset_s - interval_s / 2
    spans = [StackSpan(a * 1e-6 + shift_s, b * 1e-6 + shift_s, frames) for a, b, frames in raw]
    return Timeline(spans=spans, interval_s=interval_s, offset_error_s=error_s)


def _key(event: dict[str, Any]) -> tuple[Any, Any]:
    return event.get("name"), (event.get("args") or {}).get("filename")


def _frame(event: dict[str, Any]) -> Frame:
    args = event.get("args") or {}
    return event.get("name", "?"), args.get("filename") or "", args.get("line") or 0


def _spans_us(events: Iterable[dict[str, Any]]) -> list[tuple[int, int, tuple[Frame, ...]]]:
    """(start µs, end µs, stack) between successive stamps, from one thread's begin/end events."""
    spans: list[tuple[int, int, tuple[Frame, ...]]] = []
    stack: list[Frame] = []
    held_since_us: int | None = None
    for event in events:
        ts = event["ts"]
        if held_since_us is not None and ts > held_since_us and stack:
            spans.append((held_since_us, ts, tuple(stack)))
        held_since_us = ts
        if event["ph"] == "B":
            stack.append(_frame(event))
        elif stack:
            stack.pop()  # py-spy ends a stack's frames innermost first
    return spans


def _clock_offset(
    spans: Sequence[tuple[int, int, tuple[Frame, ...]]], switches: Sequence[float], interval_s: float
) -> tuple[float, float] | None:
    """(offset, error): session time = py-spy time + offset, right to within error; None
    when no sample fell in the mark.

    The first sample seen in step k (k+1 `_mark_step` frames deep) was read between the
    step's start and end: each step bounds the offset from below (firm) and from above (firm
    unless py-spy stamped that sample late), and so does the first sample after the mark."""
    lows: list[float] = []
    highs: list[float] = []
    seen: set[int] = set()
    in_mark = False
    for start_us, _, frames in spans:
        keys = [(name, file) for name, file, _ in frames]
        if _MARK in keys:
            in_mark = True
            step = keys.count(_STEP) - 1
            if 0 <= step < len(switches) - 1 and step not in seen:
                seen.add(step)
                lows.append(switches[step] - start_us * 1e-6)
                highs.append(switches[step + 1] - start_us * 1e-6)
        elif in_mark:  # the first sample after the mark
            lows.append(switches[-1] - start_us * 1e-6)
            break
    if not seen:
        return None
    lo, hi = max(lows), min(highs)
    if hi < lo:  # a late stamp broke an upper bound; the lower bounds still hold, and the
        return lo, interval_s / 2  # earliest of the steps' first samples is rarely later than this
    return (lo + hi) / 2, (hi - lo) / 2
