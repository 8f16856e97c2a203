"""Assemble the `deep` part of a Run from a torch.profiler trace of one generate call."""

from __future__ import annotations

from typing import Any

from lmprof.analyze.flames import (
    cuda_memory_flame,
    device_flame,
    memory_flame,
    python_memory_flame,
    time_flame,
    trace_events,
)
from lmprof.analyze.inside_run import (
    copy_rows,
    kernels_by_launch,
    module_rows,
    operator_rows,
    step_breakdown,
    untraced_step_estimate,
)
from lmprof.analyze.memory_kinds import device_memory_by_kind, expected_memory, host_memory_by_kind
from lmprof.analyze.trace_tree import build_tree
from lmprof.collect.trace_events import TorchTrace, gc_paused
from lmprof.record.deep import DeepProfile
from lmprof.record.run import Run


def stage_windows(run: Run, trace: TorchTrace) -> dict[str, tuple[float, float]]:
    """The prefill and decode phases of the traced call, on the session clock."""
    end = trace.start_s + trace.wall_s
    windows = {}
    for p in run.phases:
        # a phase of the traced call starts inside the trace; decode may outlast it when only
        # the first N steps were traced
        if p.name in ("prefill", "decode") and trace.start_s <= p.start_s < end:
            windows.setdefault(p.name, (p.start_s, min(p.end_s, end)))
    # The prefill/decode boundary from the trace's own step marker: exact on the trace clock.
    second = next((s for s in trace.spans if s.cat == "step_marker" and s.name.endswith(":1")), None)
    if second is not None and "prefill" in windows and "decode" in windows:
        windows["prefill"] = (windows["prefill"][0], second.start_s)
        windows["decode"] = (second.start_s, windows["decode"][1])
    # Tracing may stop after the first N decode steps: the window ends at the last marker.
    markers = [s for s in trace.spans if s.cat == "step_marker"]
    if "decode" in windows and markers and trace.steps_traced is not None:
        windows["decode"] = (windows["decode"][0], markers[-1].start_s)
    return windows


def build_deep_profile(run: Run, trace: TorchTrace, kv_samples: list[tuple[float, int]]) -> DeepProfile:
    with gc_paused():
        return _build_deep_profile(run, trace, kv_samples)


def _build_deep_profile(run: Run, trace: TorchTrace, kv_samples: list[tuple[float, int]]) -> DeepProfile:
    roots = build_tree(trace.spans, trace.main_tid)
    launches = kernels_by_launch(trace.spans)
    windows = stage_windows(run, trace)
    gen = _traced_generation(run, trace)
    decode_steps = (gen.new_tokens - 1) if gen else 1
    if trace.steps_traced is not None:
        decode_steps = min(decode_steps, trace.steps_traced)
    steps = {"prefill": 1, "decode": max(decode_steps, 1)}
    allocator = [s for s in trace.spans if s.cat == "memory"]  # the copies and memory by kind read them
    deep = DeepProfile(
        operators=operator_rows(roots, windows, launches),
        modules=module_rows(roots, windows, launches, trace.module_types),
        step_breakdown=step_breakdown(roots, windows, steps),
        copies=copy_rows(roots, windows, launches, allocator),
        trace=trace_events(roots, trace.spans),
    )
    flames = [time_flame(run.phases, run.wall_s, roots, launches)]
    for extra in (
        device_flame(run.phases, roots, launches),
        memory_flame(run.phases, roots, trace.spans, trace.main_tid),
    ):
        if extra is not None:
            flames.append(extra)
    if trace.python_allocations:
        flames.append(python_memory_flame(trace.python_allocations))
    if trace.cuda_allocations:
        flames.append(cuda_memory_flame(trace.cuda_allocations))
    deep.flames = flames
    window = (trace.start_s, trace.start_s + trace.wall_s)
    memory = [s for s in allocator if "Total Allocated" in s.args]
    cpu_allocated = [
        (s.start_s, int(s.args["Total Allocated"])) for s in memory if s.args.get("Device Type", 0) == 0
    ]
    cuda_live = [
        (s.start_s, int(s.args["Total Allocated"]), int(s.args.get("Total Reserved", 0)))
        for s in memory
        if s.args.get("Device Type") == 1
    ]
    by_kind: dict[str, Any] = {}
    host = host_memory_by_kind(run, window, kv_samples, cpu_allocated)
    if host:
        by_kind["host"] = host
    device = device_memory_by_kind(run, window, kv_samples, cuda_live)
    if device:
        by_kind["device"] = device
    if run.model and gen:
        by_kind["expected"] = expected_memory(run.model, gen.prompt_tokens + gen.new_tokens, gen.batch_size)
        by_kind["kv_growth_bytes_per_token"] = _kv_growth(kv_samples)
    deep.memory_by_kind = by_kind or None
    if trace.cuda_history_note:
        deep.notes.append(trace.cuda_history_note)
    reference = untraced_reference(run.generations, trace.steps_traced)
    if trace.tracer_cost:
        for stage, untraced_s in reference.items():
            if stage in deep.step_breakdown:
                deep.step_breakdown[stage]["untraced"] = untraced_step_estimate(
                    deep.step_breakdown[stage],
                    trace.tracer_cost["per_op_s"],
                    trace.tracer_cost["per_range_s"],
                    untraced_s,
                )
    deep.notes.append(
        f"torch.profiler traced one generate call ({trace.wall_s:.2f} s on the session clock) with "
        + ", ".join(trace.options.describe())
        + (
            f", prefill and the first {trace.steps_traced} decode steps."
            if trace.steps_traced is not None
            else "."
        )
    )
    return deep


def untraced_reference(generations, steps_traced: int | None) -> dict[str, float]:
    """What each traced stage took per step untraced: the untraced call's prefill, and the mean
    of its first `steps_traced` decode steps (the traced breakdown is a mean over those)."""
    traced = next((g for g in generations if g.traced), None)
    plain = next(
        (g for g in generations if not g.traced and traced and g.new_tokens == traced.new_tokens), None
    )
    if plain is None:
        return {}
    out = {"prefill": plain.prefill_s} if plain.prefill_s else {}
    k = steps_traced or len(plain.decode_step_latencies_s)
    steps = plain.decode_step_latencies_s[:k]
    if steps:
        out["decode"] = sum(steps) / len(steps)
    return out


def _traced_generation(run: Run, trace: TorchTrace):
    end = trace.start_s + trace.wall_s + 1e-6
    return next((g for g in run.generations if trace.start_s - 1e-6 <= g.first_token_s <= end), None)


def _kv_growth(kv_samples: list[tuple[float, int]]) -> float | None:
    """Measured KV-cache growth per generated token (bytes), from the cache's tensors."""
    if len(kv_samples) < 3:
        return None
    (_t1, b1), (_t2, b2) = kv_samples[1], kv_samples[-1]
    steps = len(kv_samples) - 2
    return (b2 - b1) / steps if steps > 0 else None


def tracer_overhead(generations, steps_traced: int | None = None) -> dict[str, dict[str, Any]]:
    """torch.profiler's cost, from the traced call and an untraced call of the same length:
    paired runs in one process, so the slowdown is measured, not assumed. Only the decode
    steps that were traced are compared (median step latency, traced over untraced)."""
    from statistics import median

    traced = next((g for g in generations if g.traced), None)
    plain = next(
        (g for g in generations if not g.traced and traced and g.new_tokens == traced.new_tokens), None
    )
    if traced is None or plain is None or not plain.prefill_s:
        return {}
    k = steps_traced or len(traced.decode_step_latencies_s)
    t_steps, p_steps = traced.decode_step_latencies_s[:k], plain.decode_step_latencies_s[:k]
    if not t_steps or not p_steps:
        return {}
    return {
        "torch.profiler": {
            "method": "median latency of the traced decode steps against the same steps of an untraced "
            "call of the same length, same process",
            "traced_step_s": median(t_steps),
            "untraced_step_s": median(p_steps),
            "decode_slowdown": median(t_steps) / median(p_steps),
            "prefill_slowdown": traced.prefill_s / plain.prefill_s,
            "distorts": [
                "the traced call's prefill and decode phases and generation figures",
                "operator, module and flame-graph times (inflated by the same order)",
            ],
        }
    }
