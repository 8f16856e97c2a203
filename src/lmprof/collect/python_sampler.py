"""py-spy sampling of this very process: a function-level CPU profile of the whole run.

py-spy runs as a child process that reads this interpreter's memory from outside, so the
profiled code runs unmodified. What it costs depends on the mode: in blocking mode py-spy
pauses every thread for each sample (ptrace), in `--nonblocking` mode it reads stacks while
they run (cheaper, an occasional torn stack); native frames need the pauses and unwinding.
The cost is measured, not assumed: see `lmprof.collect.overhead.measure_slowdown`.

py-spy drops idle samples (threads sleeping or blocked), so the profile says where CPU-active
Python time went; a main thread asleep while torch's worker threads finish an op can count
as idle.

A py-spy that is missing or cannot attach never stops the run: the result says
`available=False` and why.

A second py-spy records the same process as a timeline (time-stamped stacks, idle samples
kept; see `lmprof.collect.py_spy_timeline`): the speedscope file has no times on its samples,
and the gap rows need them. Reading stacks without pausing, it took about 2% of a core at
100 Hz here (0.07 s of CPU in 4 s); the calibration measures both processes together.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmprof.collect.py_spy_process import (
    ATTACH_TIMEOUT_S,
    STOP_TIMEOUT_S,
    last_line,
    read_text,
    spawn_recorder,
)
from lmprof.collect.py_spy_timeline import Timeline, TimelineRecorder
from lmprof.record.deep import FlameGraph

_SUMMARY = re.compile(r"Samples: (\d+) Errors: (\d+)")
_THREAD_NAME = re.compile(r'^Thread \d+ "(.*)"$')


@dataclass
class PythonProfile:
    """A function-level profile of one run, from py-spy or cProfile.

    `to_record()` is the `DeepProfile.python` dict; `flame` goes in `DeepProfile.flames`.
    """

    sampler: str  # "py-spy" or "cprofile"
    available: bool
    reason: str | None = None  # why not available
    rate_hz: int | None = None  # samples per second (py-spy); None for cProfile
    native: bool = False  # native (C/C++) frames included
    nonblocking: bool | None = None  # py-spy read stacks without pausing the process
    # rows of {name, file, line, calls, primitive_calls, self_s, total_s}; calls are None
    # for a sampler, which cannot count them
    functions: list[dict[str, Any]] = field(default_factory=list)
    total_s: float = 0.0  # profiled time: sampled seconds (all threads), or cProfile's total self time
    wall_s: float | None = None  # wall time between start and stop
    samples: int | None = None
    sample_errors: int | None = None  # stacks py-spy failed to read
    pstats_file: str | None = None
    slowdown: float | None = None  # profiled / baseline wall time, when measured
    notes: list[str] = field(default_factory=list)
    flame: FlameGraph | None = None
    # the stopping thread's stacks over time (py-spy only): not saved; the session names
    # the gap rows' functions from it
    timeline: Timeline | None = None

    def to_record(self) -> dict[str, Any]:
        data = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("flame", "timeline")
        }
        data["functions"] = [dict(row) for row in self.functions]
        data["notes"] = list(self.notes)
        return data


def find_py_spy(py_spy_path: str | os.PathLike[str] | None = None) -> Path:
    """The py-spy binary: the given path, else PATH, else beside this interpreter (a venv's bin)."""
    if py_spy_path is not None:
        return Path(py_spy_path)
    found = shutil.which("py-spy")
    return Path(found) if found else Path(sys.executable).parent / "py-spy"


class PySpySampler:
    """Start, stop, and get a `PythonProfile`. Never prints, never raises for py-spy trouble."""

    def __init__(
        self,
        rate_hz: int = 100,
        native: bool = False,
        py_spy_path: str | os.PathLike[str] | None = None,
        *,
        nonblocking: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
        attach_timeout_s: float = ATTACH_TIMEOUT_S,
        timeline: bool = True,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("sampling rate must be positive")
        if native and nonblocking:
            raise ValueError("py-spy cannot read native stacks with --nonblocking")
        self.rate_hz = int(rate_hz)
        self.native = native
        # Python frames: nonblocking by default, since pausing the process for every sample
        # slowed torch decode loops by 1.1-1.4x here against ~1.0x without pauses.
        self._nonblocking_requested = nonblocking
        self.nonblocking = (not native) if nonblocking is None else nonblocking
        self.py_spy = find_py_spy(py_spy_path)
        self._clock = clock
        self._attach_timeout_s = attach_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._want_timeline = timeline
        self._timeline: TimelineRecorder | None = None
        self._dir: Path | None = None
        self._start_s: float | None = None
        self._reason: str | None = None
        self._notes: list[str] = []
        self._ptracer_set = False

    @property
    def reason(self) -> str | None:
        """Why there will be no profile (None while all is well)."""
        return self._reason

    def start(self) -> PySpySampler:
        if not (self.py_spy.is_file() and os.access(self.py_spy, os.X_OK)):
            self._reason = f"py-spy not found at '{self.py_spy}' (pip install py-spy)"
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="lmprof-py-spy-"))
        failure = self._launch(self.native, self.nonblocking)
        if failure is not None and self.native:
            # Native unwinding is the part most likely to fail (no symbols, an unsupported
            # platform); Python frames alone are still worth having.
            self._notes.append(f"native frames unavailable ({failure}); Python frames only")
            self.native = False
            self.nonblocking = self._nonblocking_requested is not False
            failure = self._launch(False, self.nonblocking)
        if failure is not None:
            self._reason = f"py-spy could not attach: {failure}"
            self._cleanup()
            return self
        if self._want_timeline:
            self._timeline = TimelineRecorder(self.py_spy, self.rate_hz, self._dir, self._clock).start()
        self._start_s = self._clock()
        return self

    def stop(self) -> PythonProfile:
        profile = PythonProfile(
            sampler="py-spy",
            available=False,
            rate_hz=self.rate_hz,
            native=self.native,
            nonblocking=self.nonblocking,
        )
        proc, out_dir = self._proc, self._dir
        if proc is None or out_dir is None or self._start_s is None:
            profile.reason = self._reason or "the sampler was not started"
            return profile
        profile.wall_s = self._clock() - self._start_s
        self._proc = None
        if self._timeline is not None:
            self._timeline.mark_and_stop()
        try:
            early_exit = proc.poll() is not None
            if not early_exit:
                proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    profile.reason = f"py-spy did not write its profile within {STOP_TIMEOUT_S:.0f} s"
                    return profile
            log = read_text(out_dir / "py-spy.log")
            if early_exit:
                self._notes.append(f"py-spy stopped before the run ended: {last_line(log)}")
            output = out_dir / "profile.json"
            if not output.is_file():
                profile.reason = f"py-spy wrote no profile: {last_line(log)}"
                return profile
            try:
                data = json.loads(output.read_text(encoding="utf-8"))
            except ValueError as exc:
                profile.reason = f"py-spy wrote an unreadable profile: {exc}"
                return profile
            profile.flame, profile.functions, profile.samples = profile_from_speedscope(
                data, self.rate_hz, native=self.native, source=self._source()
            )
            profile.total_s = profile.samples / self.rate_hz
            summary = _SUMMARY.search(log)
            profile.sample_errors = int(summary.group(2)) if summary else None
            profile.available = True
            if self._timeline is not None:
                profile.timeline = self._timeline.read()
                self._notes.extend([self._timeline.note] if self._timeline.note else [])
            profile.notes = [*self._notes, *_core_contention_notes()]
            return profile
        finally:
            self._cleanup()

    # --- the py-spy process -------------------------------------------------------------

    def _launch(self, native: bool, nonblocking: bool) -> str | None:
        """Start the sampling py-spy and wait until it has attached; None, or why it did not."""
        assert self._dir is not None
        args = [
            "--rate", str(self.rate_hz), "--format", "speedscope", "--output", str(self._dir / "profile.json"),
            # --function: one line per function (its def line), as cProfile reports it
            "--function",
        ]  # fmt: skip
        if native:
            args.append("--native")
        if nonblocking:
            args.append("--nonblocking")
        self._allow_child_ptrace()
        self._proc, failure = spawn_recorder(
            self.py_spy, args, self._dir / "py-spy.log", self._attach_timeout_s
        )
        return failure

    def _allow_child_ptrace(self) -> None:
        # Under Yama ptrace_scope=1 (Ubuntu's default) a process may only be read by its
        # ancestors, and py-spy is our child: let any process of ours trace us until stop().
        try:
            scope = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
        except OSError:
            return
        if scope != "1" or self._ptracer_set:
            return
        pr_set_ptracer, pr_set_ptracer_any = 0x59616D61, ctypes.c_ulong(-1)
        libc = ctypes.CDLL(None, use_errno=True)
        self._ptracer_set = libc.prctl(pr_set_ptracer, pr_set_ptracer_any, 0, 0, 0) == 0

    def _cleanup(self) -> None:
        if self._timeline is not None:
            self._timeline.kill()  # a no-op once read
            self._timeline = None
        if self._ptracer_set:
            ctypes.CDLL(None).prctl(0x59616D61, ctypes.c_ulong(0), 0, 0, 0)
            self._ptracer_set = False
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _source(self) -> str:
        frames = "Python and native frames" if self.native else "Python frames"
        mode = "nonblocking" if self.nonblocking else "blocking"
        return f"py-spy sampling at {self.rate_hz} Hz ({frames}, {mode}); idle samples dropped"


def _core_contention_notes() -> list[str]:
    # Measured here: with torch's threads on every core, py-spy ran only when a core came
    # free, at thread barriers, and put 80-100% of samples in GELU.forward where timing put
    # ~20%; with one core left free the shares matched the timings.
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = torch.get_num_threads()
    if threads < cores:
        return []
    return [
        f"torch used {threads} threads on {cores} cores, so py-spy had no core of its own: its samples "
        f"over-weight code waiting at thread barriers (torch.set_num_threads({max(cores - 1, 1)}) avoids it)"
    ]


# --- py-spy's speedscope file -> flame graph and function table -----------------------------


def profile_from_speedscope(
    data: dict[str, Any],
    rate_hz: int,
    *,
    native: bool = False,
    source: str = "py-spy",
    roots: Sequence[str] | None = None,
) -> tuple[FlameGraph, list[dict[str, Any]], int]:
    """(flame, function rows, sample count) from py-spy's speedscope output.

    Speedscope stacks are root-first frame indices, one profile per thread. Each sample
    weighs 1/rate_hz seconds. Stacks gain a "thread:NAME" root so threads stay apart.
    """
    frames = data["shared"]["frames"]
    roots = sys.path if roots is None else roots
    kinds = [_is_python_frame(f, native) for f in frames]
    labels = [_frame_label(f, py) for f, py in zip(frames, kinds)]
    keys = [_function_key(f, py, roots) for f, py in zip(frames, kinds)]
    stack_counts: Counter[tuple[str, ...]] = Counter()
    self_counts: Counter[tuple[str, str | None, int | None]] = Counter()
    total_counts: Counter[tuple[str, str | None, int | None]] = Counter()
    samples = 0
    for thread in data["profiles"]:
        root = f"thread:{_thread_name(thread.get('name', ''))}"
        for stack in thread["samples"]:
            samples += 1
            stack_counts[(root, *(labels[i] for i in stack))] += 1
            if stack:
                self_counts[keys[stack[-1]]] += 1
            # A recursive function is on the stack more than once but ran once per sample.
            total_counts.update({keys[i] for i in stack})
    flame = FlameGraph(
        name="python",
        unit="seconds",
        source=source,
        stacks=[list(s) for s in stack_counts],
        weights=[n / rate_hz for n in stack_counts.values()],
    )
    rows = [
        {
            "name": name,
            "file": file,
            "line": line,
            "calls": None,
            "primitive_calls": None,
            "self_s": self_counts[(name, file, line)] / rate_hz,
            "total_s": n / rate_hz,
        }  # fmt: skip
        for (name, file, line), n in total_counts.items()
    ]
    rows.sort(key=lambda r: (-r["self_s"], -r["total_s"], r["name"]))
    return flame, rows, samples


def short_path(path: str, roots: Iterable[str]) -> str:
    """A source path relative to the import root it lives under ("transformers/generation/utils.py")."""
    best = ""
    for root in roots:
        root = os.path.join(os.path.abspath(root), "") if root else ""
        if root and path.startswith(root) and len(root) > len(best):
            best = root
    return path[len(best) :] if best else path


def _is_python_frame(frame: dict[str, Any], native: bool) -> bool:
    # Speedscope drops py-spy's own python/native flag; only native runs mix the two, and
    # there a frame is Python when it comes from a source file rather than a library.
    if not native:
        return True
    file = frame.get("file") or ""
    return file.endswith((".py", ".pyw")) or file.startswith("<")


def _frame_label(frame: dict[str, Any], python: bool) -> str:
    name, file, line = frame.get("name", "?"), frame.get("file") or "", frame.get("line") or 0
    if python:
        return f"py:{name} ({os.path.basename(file)}:{line})"
    return f"native:{name} ({os.path.basename(file)})" if file else f"native:{name}"


def _function_key(
    frame: dict[str, Any], python: bool, roots: Sequence[str]
) -> tuple[str, str | None, int | None]:
    name, file, line = frame.get("name", "?"), frame.get("file") or None, frame.get("line") or None
    if python:
        return name, short_path(file, roots) if file else None, line
    return name, os.path.basename(file) if file else None, None


def _thread_name(profile_name: str) -> str:
    match = _THREAD_NAME.match(profile_name)
    return match.group(1) if match else profile_name or "?"
