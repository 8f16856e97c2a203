"""torch.profiler over one generate call, with nn.Module ranges, read back as plain spans.

Under `--deep` the instrumentation starts this at a generate call's entry and finishes it
at the exit, so loading is never traced (tracing it costs minutes). Forward hooks on every
submodule open a `module:<path>` range through torch's C++ `_RecordFunctionFast` (about
1 µs a range where Python's `record_function` context manager took about 11 µs), so each
aten op lands inside the module path that ran it. What is traced is a `TraceOptions`;
`benchmarks/deep_cost.py` measures what each option costs a decode step.

`finish()` only stops the profiler (inside the traced call's window); `export()` reads the
trace back and is lmprof's own work: the session runs it after the measured window closes.
On the CPU it reads torch.profiler's event objects directly; with Python stacks or CUDA
activity, the exported Chrome-trace JSON (never `key_averages()`, ~100 µs per event). The
profiler's clock is tied to the session clock by a marker range recorded at a known session
time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lmprof.collect.trace_events import (
    CLOCK_MARKER,
    MODULE_PREFIX,
    STEP_MARKER,
    Span,
    TorchTrace,
    TraceOptions,
    cuda_allocations_by_stack,
    gc_paused,
    read_kineto_events,
    read_spans,
)

TRACEMALLOC_FRAMES = 24
CUDA_HISTORY_ENTRIES = 200_000
CALIBRATION_CALLS = 1000  # ops (and module calls) per calibration loop of the tracer's own cost
CALIBRATION_REPEATS = 5


class TorchTraceCollector:
    def __init__(
        self,
        model: Any,
        now_s: Callable[[], float],
        *,
        cuda: bool,
        with_stack: bool | None = None,
        max_decode_steps: int | None = 16,
        options: TraceOptions | None = None,
    ) -> None:
        options = options or TraceOptions()
        if with_stack is not None:
            options = dataclasses.replace(options, with_stack=with_stack)
        self.options = options
        self._model = model
        self._now_s = now_s
        self._cuda = cuda
        self._handles: list[Any] = []
        self._prof: Any = None
        self._module_types: dict[str, str] = {}
        self._t0_s = 0.0
        self._marker_s = 0.0
        self.marker_uncertainty_s = 0.0
        # Tracing every step of a long generation costs seconds of export and GBs of
        # memory per hundred steps; steps look alike, so the first N are traced.
        self._max_decode_steps = max_decode_steps
        self._end_s: float | None = None
        self._finished = False
        self._tracemalloc = False
        self._cuda_history = False
        self._cuda_history_note: str | None = None
        self._allocations: list[tuple[list[str], int]] = []
        self._cuda_allocations: list[tuple[list[str], int]] = []
        self._finish_s = 0.0
        self._disabled = False  # the profiler disabled already (with Python stacks, at the call's exit)

    def _profiler(self) -> Any:
        from torch.profiler import ProfilerActivity, profile

        o = self.options
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
        return profile(
            activities=activities,
            record_shapes=o.record_shapes,
            with_stack=o.with_stack,
            with_flops=o.with_flops,
            profile_memory=o.profile_memory,
        )

    def _install_module_ranges(self) -> None:
        import torch

        range_fast = torch._C._profiler._RecordFunctionFast
        root = type(self._model).__name__
        paths = {m: (name or root) for name, m in self._model.named_modules()}
        self._module_types = {p: type(m).__name__ for m, p in paths.items()}
        if not self.options.module_ranges:
            return
        names = {m: MODULE_PREFIX + p for m, p in paths.items()}
        stack: list[Any] = []

        def pre(module: Any, args: Any) -> None:
            rf = range_fast(names[module])
            rf.__enter__()
            stack.append(rf)

        def post(module: Any, args: Any, output: Any) -> None:
            if stack:
                stack.pop().__exit__(None, None, None)

        for module in paths:
            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post))

    def start(self) -> None:
        import torch
        from torch.autograd.profiler import record_function

        self._install_module_ranges()
        self._prof = self._profiler()
        if self.options.python_allocations:
            import tracemalloc

            # Host allocations by Python stack during the traced call; only if nobody else traces.
            self._tracemalloc = not tracemalloc.is_tracing()
            if self._tracemalloc:
                tracemalloc.start(TRACEMALLOC_FRAMES)
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
        if self._end_s is not None or self._finished:
            return
        if self.options.step_markers:
            import torch

            with torch._C._profiler._RecordFunctionFast(f"{STEP_MARKER}{index}"):
                pass
        if self._max_decode_steps is not None and index > self._max_decode_steps:
            self._end_s = self._now_s()
            self._stop_tracing()

    def _stop_tracing(self) -> None:
        """Everything that must stop when the traced window ends: recording ops, ranges and
        device activity, the hooks, tracemalloc's and the CUDA allocator's recording. Cheap.

        The profiler itself stays enabled, paused (`toggle_collection_dynamic`): disabling it
        materializes the trace, about 5 KB of memory per event (1 GB for 16 decode steps of a
        30-layer model), which would land in the workload's own memory figures. `export`
        disables it after the measured window. Until then only torch's allocator events are
        still recorded (tens of bytes and well under a µs each); export drops them."""
        from torch.profiler import ProfilerActivity

        t0 = time.perf_counter()
        try:
            if self.options.with_stack:
                # the Python tracer cannot be paused: it would trace the rest of the run
                self._prof.stop()
                self._disabled = True
            else:
                with _quiet_stderr():  # torch warns about GPU tracks even when both are toggled
                    self._prof.toggle_collection_dynamic(False, [ProfilerActivity.CPU, ProfilerActivity.CUDA])
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._allocations = self._python_allocations()
            self._cuda_allocations = self._cuda_allocations_now()
        self._finish_s += time.perf_counter() - t0

    def _python_allocations(self) -> list[tuple[list[str], int]]:
        import tracemalloc

        if not self._tracemalloc:
            return []
        self._tracemalloc = False
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

    def _cuda_allocations_now(self) -> list[tuple[list[str], int]]:
        if not self._cuda_history:
            return []
        import torch

        self._cuda_history = False
        try:
            snapshot = torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
        return cuda_allocations_by_stack(snapshot)

    def finish(self) -> None:
        """End the traced window (at the generate call's exit): stops tracing, reads nothing."""
        if self._finished:
            return
        self._finished = True
        if self._end_s is None:
            self._end_s_final = self._now_s()
            self._stop_tracing()
        else:
            self._end_s_final = self._end_s

    def export(self, calibrate: bool = True) -> TorchTrace:
        """Read the trace back as Spans (lmprof's own work: run it outside the measured
        window), and measure the tracer's own per-op and per-range cost with the same options."""
        self.finish()
        t0 = time.perf_counter()
        with gc_paused():
            if not self._disabled:
                self._prof.stop()
            if self._cuda or self.options.with_stack:
                # Python frames and device activity (streams, kernels, the allocator's own totals)
                # are only in the exported Chrome trace
                spans = self._spans_from_chrome_trace()
            else:
                spans = read_kineto_events(self._prof.profiler.kineto_results.events(), self._marker_s)
        self._prof = None  # the profiler's own copy of the events goes once the spans exist
        # allocator events recorded while the profiler waited, paused, are not the traced call's
        spans = [
            s for s in spans if s.cat not in ("memory", "python_function") or s.start_s <= self._end_s_final
        ]
        export_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        cost = measure_tracer_cost(self.options, self._cuda) if calibrate else None
        calibrate_s = time.perf_counter() - t1
        return TorchTrace(
            spans=spans,
            main_tid=threading.get_native_id(),
            module_types=self._module_types,
            wall_s=self._end_s_final - self._t0_s,
            start_s=self._t0_s,
            with_stack=self.options.with_stack,
            steps_traced=self._max_decode_steps if self._end_s is not None else None,
            python_allocations=self._allocations,
            cuda_allocations=self._cuda_allocations,
            cuda_history_note=self._cuda_history_note,
            options=self.options,
            tracer_cost=cost,
            own_work_s={"finish_s": self._finish_s, "export_s": export_s, "calibrate_s": calibrate_s},
        )

    def _spans_from_chrome_trace(self) -> list[Span]:
        fd, path = tempfile.mkstemp(suffix=".json", prefix="lmprof-trace-")
        os.close(fd)
        try:
            self._prof.export_chrome_trace(path)
            with open(path, encoding="utf-8", errors="replace") as fh:
                events = json.load(fh).get("traceEvents", [])
        finally:
            os.unlink(path)
        return read_spans(events, self._marker_s)

    def discard(self) -> None:
        """finish() and disable the profiler without reading the trace (benchmarks)."""
        self.finish()
        if self._prof is not None:
            if not self._disabled:
                self._prof.stop()
            self._prof = None

    def stop(self) -> TorchTrace:
        """finish() and export() at once (library callers that do not separate the two)."""
        self.finish()
        return self.export()


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the process's stderr (file descriptor 2, where torch's C++ logs) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure_tracer_cost(options: TraceOptions, cuda: bool = False) -> dict[str, Any]:
    """What the tracer adds per aten op and per module range, with `options`, in this process:
    a loop of small ops (and of calls of an empty nn.Module carrying the same hooks) timed
    untraced and traced, median of a few repeats. The ops are CPU ops on one-element tensors,
    so the figure is the tracer's fixed cost per op (its floor), not a cost that grows with
    the op's work."""
    import torch

    x = torch.ones(1)
    probe = torch.nn.Identity()
    n = CALIBRATION_CALLS

    def ops() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            torch.add(x, x)
        return time.perf_counter() - t0

    def calls() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            probe(x)
        return time.perf_counter() - t0

    collector = TorchTraceCollector(probe, time.perf_counter, cuda=False, max_decode_steps=None,
                                    options=dataclasses.replace(options, python_allocations=False))  # fmt: skip
    # Fastest of several interleaved repeats on each side: other processes only ever add time.
    plain_ops, plain_calls, traced_ops, traced_calls = [], [], [], []
    with torch.inference_mode():
        for _ in range(CALIBRATION_REPEATS):
            plain_ops.append(ops())
            plain_calls.append(calls())
            collector._handles.clear()
            collector._install_module_ranges()
            prof = collector._profiler()
            prof.__enter__()
            try:
                traced_ops.append(ops())
                traced_calls.append(calls())
            finally:
                prof.__exit__(None, None, None)
                for handle in collector._handles:
                    handle.remove()
    per_op = max(min(traced_ops) - min(plain_ops), 0.0) / n
    # an empty module call runs no op: what is left is the range and its hooks
    per_range = max(min(traced_calls) - min(plain_calls), 0.0) / n
    return {
        "per_op_s": per_op,
        "per_range_s": per_range if options.module_ranges else 0.0,
        "method": f"{n} one-element CPU ops and {n} calls of an empty nn.Module, untraced against traced "
        f"with the same options, fastest of {CALIBRATION_REPEATS} interleaved repeats each",
    }
