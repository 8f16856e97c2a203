"""Flame graphs of a run: one stack per traced span, phases at the root.

The time flame covers the whole run: each phase's own time (not inside a child phase or
a traced span) is a stack of phase frames; inside the traced generate call, every span's
self time is a stack phase -> Python frames -> nn.Module path -> aten op -> the CUDA
kernel a launch queued. Its total weight is the run's wall time, so nothing is hidden.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

from lmprof.analyze.trace_tree import Node, all_nodes, frame_label, innermost_at
from lmprof.collect.trace_events import LAUNCH_CATEGORIES, Span
from lmprof.record.deep import FlameGraph, TraceEvent
from lmprof.record.run import Phase

UNATTRIBUTED_FRAME = "phase:(unattributed)"


class PhaseChains:
    """The chain of phase names (root first) covering a time on the session clock."""

    def __init__(self, phases: list[Phase]) -> None:
        self._phases = phases
        self._starts = [p.start_s for p in phases]
        # The timeline cut at every phase start and end, with the deepest phase covering each
        # piece: a flame asks once per traced span and allocation, a hundred thousand times.
        self._cuts = sorted({p.start_s for p in phases} | {p.end_s for p in phases})
        self._piece_index = [self._search(t) for t in self._cuts]
        self._chains: dict[int | None, tuple[str, ...]] = {}

    def index_at(self, t_s: float) -> int | None:
        piece = bisect.bisect_right(self._cuts, t_s) - 1
        return self._piece_index[piece] if piece >= 0 else None

    def chain_tuple_at(self, t_s: float) -> tuple[str, ...]:
        """chain_at as a tuple, made once per phase."""
        index = self.index_at(t_s)
        chain = self._chains.get(index)
        if chain is None:
            chain = self._chains[index] = tuple(self.chain(index) or [UNATTRIBUTED_FRAME])
        return chain

    def _search(self, t_s: float) -> int | None:
        best = None
        for i in range(bisect.bisect_right(self._starts, t_s) - 1, -1, -1):
            p = self._phases[i]
            if p.start_s <= t_s < p.end_s and (best is None or p.depth > self._phases[best].depth):
                best = i
            if p.depth == 0:  # top-level phases do not overlap: nothing earlier covers t_s
                break
        return best

    def chain(self, index: int | None) -> list[str]:
        frames: list[str] = []
        while index is not None:
            frames.append("phase:" + self._phases[index].name)
            index = self._phases[index].parent_index
        return frames[::-1]

    def chain_at(self, t_s: float) -> list[str]:
        return self.chain(self.index_at(t_s)) or [UNATTRIBUTED_FRAME]


def frame_of(node: Node) -> str:
    return frame_label(node)


def _frames(node: Node) -> list[str]:
    return list(node.frames)


def time_flame(
    phases: list[Phase], wall_s: float, roots: list[Node], launches: dict[Any, list[Span]]
) -> FlameGraph:
    chains = PhaseChains(phases)
    weights: dict[tuple[str, ...], float] = defaultdict(float)
    traced: dict[int | None, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
    chain_of: dict[int | None, tuple[str, ...]] = {}
    for node in all_nodes(roots):
        index = chains.index_at(node.span.start_s)
        if index not in chain_of:
            chain_of[index] = tuple(chains.chain(index) or [UNATTRIBUTED_FRAME])
        frames = node.frames
        kernels = (
            launches.get(node.span.args.get("correlation")) if node.span.cat in LAUNCH_CATEGORIES else None
        )
        if kernels:
            frames = frames + ("kernel:" + kernels[0].name,)
        traced[index][chain_of[index] + frames] += node.self_s
    child_wall: dict[int, float] = defaultdict(float)
    for p in phases:
        if p.parent_index is not None:
            child_wall[p.parent_index] += p.wall_s
    traced_s = {index: sum(stacks.values()) for index, stacks in traced.items()}
    for index, stacks in traced.items():
        budget_s = phases[index].wall_s - child_wall[index] if index is not None else traced_s[index]
        # A span is filed under the phase it starts in; one that runs past the phase's end
        # would count that overhang twice (here and in the next phase's own time), so a
        # phase's spans are scaled to fit the time the phase itself did not give its children.
        scale = min(1.0, budget_s / traced_s[index]) if traced_s[index] > 0 and budget_s > 0 else 1.0
        for stack, weight in stacks.items():
            weights[stack] += weight * scale
    for i, p in enumerate(phases):
        own = p.wall_s - child_wall[i] - traced_s.get(i, 0.0)
        if own > 0:
            weights[tuple(chains.chain(i))] += own
    rest = wall_s - sum(p.wall_s for p in phases if p.parent_index is None)
    if rest > 0:
        weights[(UNATTRIBUTED_FRAME,)] += rest
    return _flame(
        "time",
        "seconds",
        "phases (session clock) + torch.profiler trace of the profiled generate call",
        weights,
    )


def device_flame(
    phases: list[Phase], roots: list[Node], launches: dict[Any, list[Span]]
) -> FlameGraph | None:
    """CUDA kernel time by the host stack that launched it (None on CPU)."""
    if not launches:
        return None
    chains = PhaseChains(phases)
    weights: dict[tuple[str, ...], float] = defaultdict(float)
    for node in all_nodes(roots):
        if node.span.cat not in LAUNCH_CATEGORIES:
            continue
        for k in launches.get(node.span.args.get("correlation"), []):
            stack = chains.chain_at(node.span.start_s) + _frames(node) + ["kernel:" + k.name]
            weights[tuple(stack)] += k.dur_s
    return _flame("device", "seconds", "CUDA kernel time (torch.profiler, CUPTI) by launching stack", weights)


def memory_flame(
    phases: list[Phase], roots: list[Node], spans: list[Span], main_tid: Any
) -> FlameGraph | None:
    """Bytes allocated through torch's allocators (profile_memory events) by stack."""
    chains = PhaseChains(phases)
    weights: dict[tuple[str, ...], float] = defaultdict(float)
    for s in spans:
        if s.cat != "memory":
            continue
        n_bytes = s.args.get("Bytes", 0)
        if not n_bytes or n_bytes <= 0:
            continue
        device = "cuda" if s.args.get("Device Type") == 1 else "cpu"
        node = innermost_at(roots, s.start_s) if s.tid == main_tid else None
        weights[chains.chain_tuple_at(s.start_s) + (node.frames if node else ()) + (f"alloc:{device}",)] += (
            n_bytes
        )
    if not weights:
        return None
    return _flame("memory", "bytes", "torch allocator events (torch.profiler profile_memory)", weights)


def _flame(name: str, unit: str, source: str, weights: dict[tuple[str, ...], float]) -> FlameGraph:
    items = sorted((k, v) for k, v in weights.items() if v > 0)
    return FlameGraph(
        name=name, unit=unit, source=source, stacks=[list(k) for k, _ in items], weights=[v for _, v in items]
    )


def trace_events(roots: list[Node], spans: list[Span], cap: int = 20000) -> list[TraceEvent]:
    """Module ranges, ops and kernels for the timeline, the first `cap` of them in time order
    (a long generation has hundreds of thousands; the flame and tables keep the totals)."""
    out: list[TraceEvent] = []
    for node in all_nodes(roots):  # in time order: the first `cap` are all the timeline keeps
        if len(out) >= cap:
            break
        if node.span.cat == "python_function":
            continue  # too many for a timeline; the flame graph has them
        cat = "module" if node.is_module else ("launch" if node.span.cat in LAUNCH_CATEGORIES else "op")
        out.append(
            TraceEvent(
                node.frames[-1].split(":", 1)[1], cat, node.span.start_s, node.span.dur_s, "cpu main thread"
            )
        )
    for s in spans:
        if s.cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            stream = s.args.get("stream", "?")
            out.append(TraceEvent(s.name, "kernel", s.start_s, s.dur_s, f"cuda stream {stream}"))
    out.sort(key=lambda e: e.start_s)
    return out[:cap]


def python_memory_flame(allocations: list[tuple[list[str], int]]) -> FlameGraph:
    """Host memory the traced call allocated from Python and still held at its end
    (tracemalloc), by Python stack."""
    weights: dict[tuple[str, ...], float] = defaultdict(float)
    for frames, n_bytes in allocations:
        weights[tuple(frames or ["py:(unknown)"])] += n_bytes
    return _flame(
        "memory-python",
        "bytes",
        "tracemalloc: Python allocations live at the end of the traced call",
        weights,
    )


def cuda_memory_flame(allocations: list[tuple[list[str], int]]) -> FlameGraph:
    """Bytes the CUDA caching allocator handed out during the traced call, by Python stack."""
    weights: dict[tuple[str, ...], float] = defaultdict(float)
    for frames, n_bytes in allocations:
        weights[tuple(frames)] += n_bytes
    return _flame(
        "memory-cuda", "bytes", "CUDA allocator history (torch.cuda.memory._record_memory_history)", weights
    )
