"""What happened inside the model, from a torch.profiler trace: operators, modules, the
make-up of a decode step, copies, and the CUDA kernels each op launched. Pure functions.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from lmprof.analyze.trace_tree import Node, all_nodes, module_category
from lmprof.collect.trace_events import LAUNCH_CATEGORIES, Span

COPY_OPS = {"aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"}
DTYPE_BYTES = {
    "float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "long int": 8, "int": 4,
    "short int": 2, "signed char": 1, "unsigned char": 1, "bool": 1,
}  # fmt: skip
STEP_PARTS = (
    "attention",
    "mlp",
    "norm",
    "embedding",
    "lm_head",
    "other_in_model",
    "python_in_model",
    "outside_model",
)


def stage_of(t_s: float, windows: dict[str, tuple[float, float]]) -> str | None:
    for name, (start, end) in windows.items():
        if start <= t_s < end:
            return name
    return None


def kernels_by_launch(spans: list[Span]) -> dict[Any, list[Span]]:
    """Device spans (kernels, memcpys) keyed by the correlation id of the launch that queued them."""
    out: dict[Any, list[Span]] = defaultdict(list)
    for s in spans:
        if s.cat in ("kernel", "gpu_memcpy", "gpu_memset") and "correlation" in s.args:
            out[s.args["correlation"]].append(s)
    return out


def _device_s(node: Node, launches: dict[Any, list[Span]]) -> float:
    if node.span.cat not in LAUNCH_CATEGORIES:
        return 0.0
    return sum(k.dur_s for k in launches.get(node.span.args.get("correlation"), []))


def operator_rows(roots: list[Node], windows, launches, limit: int = 60) -> dict[str, list[dict[str, Any]]]:
    agg: dict[tuple[str, str], dict[str, Any]] = {}
    for node in all_nodes(roots):
        if node.span.cat != "cpu_op":
            continue
        stage = stage_of(node.span.start_s, windows)
        if stage is None:
            continue
        row = agg.get((stage, node.span.name))
        if row is None:  # not setdefault: its default (a dict and a Counter) was built for every op
            row = agg[(stage, node.span.name)] = {
                "name": node.span.name, "calls": 0, "self_cpu_s": 0.0, "total_cpu_s": 0.0,
                "self_device_s": 0.0, "total_device_s": 0.0, "flops": 0, "_shapes": Counter(),
            }  # fmt: skip
        row["calls"] += 1
        row["total_cpu_s"] += node.span.dur_s
        row["self_cpu_s"] += node.self_s
        if launches:  # CUDA: the kernels this op's launches queued
            row["self_device_s"] += sum(_device_s(c, launches) for c in node.children)
            row["total_device_s"] += sum(_device_s(n, launches) for n in node.walk())
        row["flops"] += int(node.span.args.get("flops", 0) or 0)
        dims = node.span.args.get("Input Dims")
        if dims:
            row["_shapes"][shape_label(dims)] += 1
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (stage, _), row in agg.items():
        row["shapes"] = [s for s, _ in row.pop("_shapes").most_common(3)]
        out[stage].append(row)
    for stage in out:
        out[stage].sort(key=lambda r: -(r["self_device_s"] or r["self_cpu_s"]))
        out[stage] = out[stage][:limit]
    return dict(out)


def module_rows(
    roots: list[Node], windows, launches, module_types: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    agg: dict[tuple[str, str], dict[str, Any]] = {}
    for node in all_nodes(roots):
        if not node.is_module:
            continue
        stage = stage_of(node.span.start_s, windows)
        if stage is None:
            continue
        path = node.module_path or ""
        inner_modules = [n for n in _nearest_module_descendants(node)]
        row = agg.get((stage, path))
        if row is None:
            row = agg[(stage, path)] = {"path": path, "type": module_types.get(path, ""), "calls": 0,
                                        "total_s": 0.0, "self_s": 0.0, "device_s": 0.0}  # fmt: skip
        row["calls"] += 1
        row["total_s"] += node.span.dur_s
        row["self_s"] += node.span.dur_s - sum(n.span.dur_s for n in inner_modules)
        if launches:
            row["device_s"] += sum(_device_s(n, launches) for n in node.walk())
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (stage, _), row in agg.items():
        out[stage].append(row)
    for stage in out:
        out[stage].sort(key=lambda r: _module_sort_key(r["path"]))
    return dict(out)


def shape_label(dims: list[Any]) -> str:
    """An op's input shapes as text; a tensor-list input (e.g. the 690 weights a native decode
    step takes) reads as its length and common shape instead of hundreds of shapes."""
    parts = []
    for d in dims:
        if isinstance(d, list) and d and all(isinstance(e, list) for e in d):
            same = all(e == d[0] for e in d)
            parts.append(f"{len(d)} × {d[0]}" if same else f"{len(d)} tensors")
        else:
            parts.append(str(d))
    return "[" + ", ".join(parts) + "]"


def _nearest_module_descendants(node: Node):
    for child in node.children:
        if child.is_module:
            yield child
        else:
            yield from _nearest_module_descendants(child)


def _module_sort_key(path: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def _part_of_op(node: Node) -> str:
    # an op inside a category module counts for it, even under an inner unnamed module
    if node.module is None:
        return "outside_model"
    return module_category(node.category_module) if node.category_module else "other_in_model"


def _part_of(node: Node) -> str:
    """Which step part a node's own (self) time belongs to."""
    if node.span.cat == "cpu_op" or node.span.cat in LAUNCH_CATEGORIES:
        return _part_of_op(node)
    if node.in_op:
        # A module range opened inside an operator (lmprof's native decode step opens the
        # model's module ranges from C++): its own time is that native code, not Python.
        return _part_of_op(node)
    if node.module is not None:
        return "python_in_model"  # module ranges and Python frames between ops
    return "outside_model"


def step_breakdown(
    roots: list[Node], windows: dict[str, tuple[float, float]], steps: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Each stage's wall time split into parts that add up to it: time in attention, MLP,
    norms, embedding, lm_head, other ops inside the model, Python between ops inside
    the model, and everything outside the model forward (sampling, logits processors,
    generate's loop). Time no traced span covers is outside the model too."""
    parts = {stage: dict.fromkeys(STEP_PARTS, 0.0) for stage in windows}
    ops: dict[str, Counter[str]] = {stage: Counter() for stage in windows}
    ranges: dict[str, Counter[str]] = {stage: Counter() for stage in windows}
    for node in all_nodes(roots):
        stage = stage_of(node.span.start_s, windows)
        if stage is None:
            continue
        parts[stage][_part_of(node)] += node.self_s
        # the tracer's own work for an op or a range runs in its parent's time
        if node.span.cat == "cpu_op":
            ops[stage][_part_of(node.parent) if node.parent else "outside_model"] += 1
        elif node.is_module:
            ranges[stage][_part_of(node.parent) if node.parent else "outside_model"] += 1
    out: dict[str, dict[str, Any]] = {}
    for stage, (start, end) in windows.items():
        wall = end - start
        # what no span starting in the window accounts for is generate's own loop
        parts[stage]["outside_model"] += max(wall - sum(parts[stage].values()), 0.0)
        n = max(steps.get(stage, 1), 1)
        out[stage] = {
            "wall_s": wall,
            "steps": n,
            "parts_s": parts[stage],
            "per_step_s": {k: v / n for k, v in parts[stage].items()},
            "traced_ops": dict(ops[stage]),
            "traced_ranges": dict(ranges[stage]),
        }
    return out


def untraced_step_estimate(
    breakdown: dict[str, Any], per_op_s: float, per_range_s: float, untraced_step_s: float
) -> dict[str, Any]:
    """A stage's parts as they were without the tracer: from each part, the tracer's measured
    cost for the ops and module ranges whose bookkeeping ran in it (count x per-op or per-range
    cost) is subtracted, then the parts are scaled so that they add up to the untraced step.
    The scale takes up what the per-op floor misses (bigger ops' shape records, cache effects)."""
    n = max(breakdown.get("steps", 1), 1)
    ops, ranges = breakdown.get("traced_ops", {}), breakdown.get("traced_ranges", {})
    tracer_s = {k: (ops.get(k, 0) * per_op_s + ranges.get(k, 0) * per_range_s) / n for k in STEP_PARTS}
    corrected = {k: max(v - tracer_s[k], 0.0) for k, v in breakdown["per_step_s"].items() if k in STEP_PARTS}
    total = sum(corrected.values())
    scale = untraced_step_s / total if total > 0 else 0.0
    return {
        "step_s": untraced_step_s,
        "per_step_s": {k: v * scale for k, v in corrected.items()},
        "tracer_per_step_s": sum(tracer_s.values()),
        "ops_per_step": sum(ops.values()) / n,
        "ranges_per_step": sum(ranges.values()) / n,
        "per_op_s": per_op_s,
        "per_range_s": per_range_s,
        "scale": scale,
        "method": "the tracer's measured per-op and per-range cost subtracted from the part it ran in, "
        "then the parts scaled to the untraced step",
    }


def copy_rows(roots: list[Node], windows, launches, memory_spans: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """Device transfers and dtype/device casts, with the stage and the module (or the
    generate loop) that made them: the seed user's unexplained `copy_` seconds.

    A copy's bytes are its first input's size where shapes were recorded (--deep-shapes), else
    what the allocator gave out inside the copy on its thread (`memory_spans`, allocator events):
    the destination a cast or transfer makes. An in-place `copy_` into an existing tensor
    allocates nothing, so without shapes its bytes stay 0 (shown as not measured)."""
    allocations = _allocations_by_thread(memory_spans)
    agg: dict[tuple, dict[str, Any]] = {}
    for node in all_nodes(roots):
        if node.span.cat != "cpu_op" or node.span.name not in COPY_OPS:
            continue
        if any(a.span.cat == "cpu_op" and a.span.name in COPY_OPS for a in node.ancestors()):
            continue  # aten::to -> _to_copy -> copy_ is one copy
        stage = stage_of(node.span.start_s, windows) or "other"
        where = node.nearest_module() or "generate loop (outside the model)"
        key = (stage, node.span.name, where)
        row = agg.setdefault(
            key,
            {
                "stage": stage,
                "op": node.span.name,
                "where": where,
                "calls": 0,
                "bytes": 0,
                "cpu_s": 0.0,
                "device_s": 0.0,
            },
        )
        row["calls"] += 1
        row["bytes"] += _input_bytes(node.span.args) or _allocated_within(allocations, node.span)
        row["cpu_s"] += node.span.dur_s
        row["device_s"] += sum(_device_s(n, launches) for n in node.walk())
    return sorted(agg.values(), key=lambda r: -(r["device_s"] or r["cpu_s"]))


def _allocations_by_thread(memory_spans) -> dict[Any, tuple[list[float], list[int]]]:
    """Per thread: allocation times and the running sum of bytes allocated (frees left out)."""
    out: dict[Any, tuple[list[float], list[int]]] = {}
    for s in memory_spans:
        n_bytes = int(s.args.get("Bytes", 0) or 0)
        if n_bytes <= 0:
            continue
        times, sums = out.setdefault(s.tid, ([], [0]))
        times.append(s.start_s)
        sums.append(sums[-1] + n_bytes)
    return out


def _allocated_within(allocations, span) -> int:
    found = allocations.get(span.tid)
    if found is None:
        return 0
    times, sums = found
    return (
        sums[bisect.bisect_right(times, span.start_s + span.dur_s)]
        - sums[bisect.bisect_left(times, span.start_s)]
    )


def _input_bytes(args: dict[str, Any]) -> int:
    dims = args.get("Input Dims") or []
    types = args.get("Input type") or []
    if not dims or not isinstance(dims[0], list) or not types:
        return 0
    return math.prod(dims[0]) * DTYPE_BYTES.get(types[0], 0) if dims[0] else 0
