"""torch.profiler over one generate call, with nn.Module ranges, read back as plain spans.

Under `--deep` the instrumentation starts this at a generate call's entry and stops it at
the exit, so loading is never traced (tracing it costs minutes). Forward hooks on every
submodule open a `record_function("module:<path>")` range, so each aten op lands inside
the module path that ran it. The trace is read from the exported Chrome-trace JSON
rather than `key_averages()`, which costs ~100 µs per event. The profiler's clock is
tied to the session clock by a marker range recorded at a known session time.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODULE_PREFIX = "module:"
CLOCK_MARKER = "lmprof:clock"
TRACEMALLOC_FRAMES = 24
CUDA_HISTORY_ENTRIES = 200_000
STEP_MARKER = "lmprof:step:"  # + step index; marks where each forward (token) begins


@dataclass
class Span:
    """One trace event on the session clock."""

    name: str
    cat: str  # cpu_op, user_annotation, python_function, kernel, gpu_memcpy, cuda_runtime, ...
    start_s: float
    dur_s: float
    tid: int | str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def end_s(self) -> float:
        return self.start_s + self.dur_s


@dataclass
class TorchTrace:
    spans: list[Span]
    main_tid: int
    module_types: dict[str, str]  # module path -> class name
    wall_s: float  # profiled window on the session clock
    start_s: float
    with_stack: bool
    steps_traced: int | None = None  # decode steps traced, when tracing stopped early
    # live Python allocations made during the traced call, at its end: (frames root first, bytes)
    python_allocations: list[tuple[list[str], int]] = field(default_factory=list)
    # CUDA: bytes allocated through the caching allocator during the call, by Python stack
    # (torch.cuda.memory._record_memory_history), and why not when unavailable
    cuda_allocations: list[tuple[list[str], int]] = field(default_factory=list)
    cuda_history_note: str | None = None


class TorchTraceCollector:
    def __init__(
        self,
        model: Any,
        now_s: Callable[[], float],
        *,
        cuda: bool,
        with_stack: bool = True,
        max_decode_steps: int | None = 16,
    ) -> None:
        self._model = model
        self._now_s = now_s
        self._cuda = cuda
        self._with_stack = with_stack
        self._handles: list[Any] = []
        self._prof: Any = None
        self._module_types: dict[str, str] = {}
        self._t0_s = 0.0
        self._marker_s = 0.0
        # Tracing every step of a long generation costs seconds of export and GBs of
        # memory per hundred steps; steps look alike, so the first N are traced.
        self._max_decode_steps = max_decode_steps
        self._end_s: float | None = None

    def start(self) -> None:
        import torch
        from torch.autograd.profiler import record_function
        from torch.profiler import ProfilerActivity, profile

        root = type(self._model).__name__
        stack: list[Any] = []

        def pre(module: Any, args: Any) -> None:
            rf = record_function(MODULE_PREFIX + paths[module])
            rf.__enter__()
            stack.append(rf)

        def post(module: Any, args: Any, output: Any) -> None:
            if stack:
                stack.pop().__exit__(None, None, None)

        paths = {m: (name or root) for name, m in self._model.named_modules()}
        self._module_types = {p: type(m).__name__ for m, p in paths.items()}
        for module in paths:
            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post))
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
        self._prof = profile(
            activities=activities,
            record_shapes=True,
            with_stack=self._with_stack,
            with_flops=True,
            profile_memory=True,
        )
        import tracemalloc

        # Host allocations by Python stack during the traced call; only if nobody else traces.
        self._tracemalloc = not tracemalloc.is_tracing()
        if self._tracemalloc:
            tracemalloc.start(TRACEMALLOC_FRAMES)
        self._cuda_history = False
        self._cuda_history_note: str | None = None
        if self._cuda:
            try:  # the allocator's own history: every alloc with the Python stack that made it
                torch.cuda.memory._record_memory_history(max_entries=CUDA_HISTORY_ENTRIES)
                self._cuda_history = True
            except (AttributeError, RuntimeError, TypeError) as exc:
                self._cuda_history_note = f"CUDA allocator history unavailable: {exc}"
        self._t0_s = self._now_s()
        self._prof.__enter__()
        # The marker's trace timestamp is taken inside __enter__, between these two reads.
        before_s = self._now_s()
        with record_function(CLOCK_MARKER):
            after_s = self._now_s()
        self._marker_s = before_s
        self.marker_uncertainty_s = after_s - before_s
        del torch

    def mark_step(self, index: int) -> None:
        """Called first thing in each forward: the trace's own record of the step boundary,
        exact on the trace's clock (the session-clock alignment is only good to µs)."""
        from torch.autograd.profiler import record_function

        if self._end_s is not None:
            return
        with record_function(f"{STEP_MARKER}{index}"):
            pass
        if self._max_decode_steps is not None and index > self._max_decode_steps:
            self._end_s = self._now_s()
            self._prof.stop()

    def _python_allocations(self) -> list[tuple[list[str], int]]:
        import tracemalloc

        if not self._tracemalloc:
            return []
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        out = []
        for stat in snapshot.statistics("traceback"):
            frames = [
                f"py:{fr.filename.rsplit('site-packages/', 1)[-1]}:{fr.lineno}"
                for fr in reversed(stat.traceback)
            ]
            out.append((frames, stat.size))
        return out

    def _cuda_allocations(self) -> list[tuple[list[str], int]]:
        if not self._cuda_history:
            return []
        import torch

        try:
            snapshot = torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
        return cuda_allocations_by_stack(snapshot)

    def stop(self) -> TorchTrace:
        end_s = self._end_s if self._end_s is not None else self._now_s()
        allocations = self._python_allocations()
        cuda_allocations = self._cuda_allocations()
        try:
            if self._end_s is None:
                self._prof.__exit__(None, None, None)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
        fd, path = tempfile.mkstemp(suffix=".json", prefix="lmprof-trace-")
        os.close(fd)
        try:
            self._prof.export_chrome_trace(path)
            with open(path, encoding="utf-8", errors="replace") as fh:
                data = json.load(fh)
        finally:
            os.unlink(path)
        spans = read_spans(data.get("traceEvents", []), self._marker_s)
        return TorchTrace(
            spans=spans,
            main_tid=threading.get_native_id(),
            module_types=self._module_types,
            wall_s=end_s - self._t0_s,
            start_s=self._t0_s,
            with_stack=self._with_stack,
            steps_traced=self._max_decode_steps if self._end_s is not None else None,
            python_allocations=allocations,
            cuda_allocations=cuda_allocations,
            cuda_history_note=self._cuda_history_note,
        )


# Host calls that launch device work, and carry the correlation id of what they launched: the
# CUDA runtime's (cudaLaunchKernel, cudaMemcpyAsync) and the driver's (cuLaunchKernel: Triton's
# kernels from torch.compile launch there, and so do some libraries' kernels). Kineto files them
# under these two categories; keeping only the first lost every driver-launched kernel.
LAUNCH_CATEGORIES = frozenset({"cuda_runtime", "cuda_driver"})
KEPT_CATEGORIES = {
    "step_marker",
    "cpu_op",
    "user_annotation",
    "python_function",
    "kernel",
    "gpu_memcpy",
    "gpu_memset",
    *LAUNCH_CATEGORIES,
}


def read_spans(events: list[dict[str, Any]], marker_s: float) -> list[Span]:
    """Chrome-trace events -> Spans on the session clock (µs -> s, shifted by the marker)."""
    marker_ts = next(
        (e["ts"] for e in events if e.get("name") == CLOCK_MARKER and e.get("ph") == "X"),
        None,
    )
    if marker_ts is None:
        raise RuntimeError("torch.profiler trace lacks lmprof's clock marker")
    offset_s = marker_s - marker_ts * 1e-6
    spans = []
    for e in events:
        if e.get("name") == "[memory]" and "ts" in e:  # allocator events: instant, with Bytes
            spans.append(
                Span("[memory]", "memory", e["ts"] * 1e-6 + offset_s, 0.0, e.get("tid", 0), e.get("args", {}))
            )
            continue
        if e.get("ph") != "X" or e.get("cat") not in KEPT_CATEGORIES or e.get("name") == CLOCK_MARKER:
            continue
        if str(e.get("name", "")).startswith(STEP_MARKER):
            e = {**e, "cat": "step_marker"}
        spans.append(
            Span(
                name=e["name"],
                cat=e["cat"],
                start_s=e["ts"] * 1e-6 + offset_s,
                dur_s=max(float(e.get("dur", 0.0)), 0.0) * 1e-6,
                tid=e.get("tid", 0),
                args=e.get("args", {}),
            )
        )
    spans.sort(key=lambda s: (s.start_s, -s.dur_s))
    return spans


def cuda_allocations_by_stack(snapshot: dict[str, Any]) -> list[tuple[list[str], int]]:
    """Bytes of each `alloc` event in a CUDA allocator snapshot's history, by its Python
    stack (root first). The snapshot lists frames innermost first, as memory_viz reads them."""
    out: list[tuple[list[str], int]] = []
    for device_trace in snapshot.get("device_traces", []):
        for entry in device_trace:
            if entry.get("action") != "alloc":
                continue
            frames = [
                f"py:{f.get('name', '?')} ({str(f.get('filename', '?')).rsplit('site-packages/', 1)[-1]}:{f.get('line', 0)})"
                for f in reversed(entry.get("frames") or [])
                if str(f.get("filename", "")).endswith(".py")
            ]
            out.append((frames or ["py:(no Python frame)"], int(entry.get("size", 0))))
    return out
