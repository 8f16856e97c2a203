"""A traced call as plain records, and how torch.profiler's events become them: what a trace
records (TraceOptions), its spans on the session clock (Span) and the whole of it (TorchTrace);
which event categories are kept, how the profiler's clock is tied to the session's (a marker
range at a known session time), where shapes are sampled, and the CUDA allocator's live blocks
by stack. No profiler is started here and torch is never imported, so the analysis reads these
without the collector (torch_trace.py, which runs the profiler).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

MODULE_PREFIX = "module:"
CLOCK_MARKER = "lmprof:clock"
STEP_MARKER = "lmprof:step:"  # + step index; marks where each forward (token) begins


@dataclass(frozen=True)
class TraceOptions:
    """What the torch.profiler trace of the generate call records. The defaults are `--deep`'s:
    each pays for a view at a cost `benchmarks/deep_cost.py` measured (benchmarks/RESULTS.md)."""

    # Operators' input shapes (--deep-shapes): the operator table's shapes column. Off by default:
    # torch formats every op's shapes, strides and dtypes as strings when the profiler stops,
    # which was about half of reading 16 steps of the default model back (0.5-0.7 s of 1.0-1.2,
    # 2026-12-07); copies take their bytes from the allocator events instead.
    record_shapes: bool = False
    profile_memory: bool = True  # allocator events: memory by kind at the live peak, memory flame
    with_flops: bool = False  # FLOPs per operator (--deep-flops): 1.4x the bare trace's cost on tiny
    module_ranges: bool = True  # nn.Module paths of every op: step breakdown, module table, flame
    step_markers: bool = True  # exact step boundaries on the trace's clock
    with_stack: bool = False  # Python frames in the trace (--python-stacks)
    python_allocations: bool = False  # tracemalloc, and CUDA allocator history (--deep-allocations)

    def describe(self) -> list[str]:
        names = {
            "record_shapes": "shapes", "profile_memory": "allocator events", "with_flops": "FLOPs",
            "module_ranges": "nn.Module ranges", "step_markers": "step markers", "with_stack": "Python stacks",
            "python_allocations": "allocations by Python stack",
        }  # fmt: skip
        return [label for key, label in names.items() if getattr(self, key)]


@dataclass(slots=True)
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
    options: TraceOptions = field(default_factory=TraceOptions)
    # the tracer's own cost, measured after the call with the same options:
    # {per_op_s, per_range_s, method}; None when not measured
    tracer_cost: dict[str, Any] | None = None
    # lmprof's own work on the trace, after the measured window: {finish_s, export_s, calibrate_s}
    own_work_s: dict[str, float] = field(default_factory=dict)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a trace's hundred thousand spans and nodes are
    made: each full collection walks every one of them, and they make no cycles to collect."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
        name = str(e.get("name", ""))
        if name.startswith(STEP_MARKER):
            e = {**e, "cat": "step_marker"}
        elif name.startswith(MODULE_PREFIX) and e.get("cat") == "cpu_op":
            # _RecordFunctionFast's ranges are filed as ops; they are user ranges like record_function's
            e = {**e, "cat": "user_annotation"}
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


# Ops whose input shapes are read at every call (a copy's bytes come from them); any other op's
# every SHAPE_SAMPLE_EVERY-th call, enough for its commonest shapes at a fraction of the cost.
SHAPED_EVERY_CALL = frozenset(
    {"aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"}
)
SHAPE_SAMPLE_EVERY = 8


def read_kineto_events(events: list[Any], marker_s: float) -> list[Span]:
    """torch.profiler's own event objects (CPU activity) -> Spans on the session clock, without
    the Chrome-trace JSON round trip (writing and parsing it took most of the export). The
    main thread is the one that recorded the clock marker. Allocator events carry `Bytes` and
    the running `Total Allocated` (on the CPU, torch.profiler counts only what was allocated
    while it ran, so the running sum from 0 is the same figure its JSON reports)."""
    marker = next((e for e in events if e.name() == CLOCK_MARKER), None)
    if marker is None:
        raise RuntimeError("torch.profiler trace lacks lmprof's clock marker")
    offset_s = marker_s - marker.start_ns() * 1e-9
    main = marker.start_thread_id()
    main_tid = threading.get_native_id()
    calls: dict[str, int] = {}
    allocated = 0
    spans = []
    for e in events:
        name = e.name()
        start_s = e.start_ns() * 1e-9 + offset_s
        tid = main_tid if e.start_thread_id() == main else f"thread {e.start_thread_id()}"
        if name == "[memory]":
            n_bytes = e.nbytes()
            allocated += n_bytes
            args = {"Bytes": n_bytes, "Total Allocated": allocated, "Device Type": 0}
            spans.append(Span("[memory]", "memory", start_s, 0.0, tid, args))
            continue
        if name == CLOCK_MARKER:
            continue
        cat = e.activity_type()
        if name.startswith(STEP_MARKER):
            cat = "step_marker"
        elif name.startswith(MODULE_PREFIX):  # fast ranges are filed as ops
            cat = "user_annotation"
        elif cat not in KEPT_CATEGORIES:
            continue
        args: dict[str, Any] = {}
        if cat == "cpu_op":
            flops = e.flops()
            if flops:
                args["flops"] = flops
            n = calls[name] = calls.get(name, -1) + 1
            if name in SHAPED_EVERY_CALL or n % SHAPE_SAMPLE_EVERY == 0:
                shapes = e.shapes()
                if shapes:
                    args["Input Dims"] = shapes
                    args["Input type"] = e.dtypes()
        spans.append(Span(name, cat, start_s, max(e.duration_ns(), 0) * 1e-9, tid, args))
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
