"""The `deep` part of a Run (`lmprof profile --deep`): what happened inside the model.

Kept apart from record.py because it is optional and large. Every table here is plain
rows (dicts with unit-named keys) so renderers and the JSON Schema stay simple.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FlameGraph:
    """Stacks with weights, root first. One per kind: time (seconds) or memory (bytes).

    Frames are strings prefixed by their layer so a renderer can colour them:
    "phase:decode", "py:generate (utils.py:2584)", "module:model.layers.3.mlp",
    "op:aten::mm", "kernel:ampere_sgemm_...", "alloc:...".
    """

    name: str  # "time", "python", "memory"
    unit: str  # "seconds" or "bytes"
    source: str  # how it was measured, e.g. "torch.profiler trace (CPU ops, module ranges)"
    stacks: list[list[str]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(sum(self.weights))


@dataclass
class TraceEvent:
    """One span for the timeline (Perfetto/Chrome trace): session-clock seconds."""

    name: str
    cat: str  # "op", "module", "kernel", "python"
    start_s: float
    dur_s: float
    track: str  # e.g. "cpu thread 1", "cuda stream 7"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeepProfile:
    # per stage ("prefill", "decode"): rows of {name, calls, self_cpu_s, total_cpu_s,
    # self_device_s, total_device_s, flops, shapes}
    operators: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # per stage: rows of {path, type, calls, total_s, self_s, device_s}
    modules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # per stage: {total_s, steps, parts: {attention_s, mlp_s, norm_s, embedding_s, lm_head_s,
    # outside_model_s (sampling, generate bookkeeping), other_s}}
    step_breakdown: dict[str, dict[str, Any]] = field(default_factory=dict)
    # host<->device copies and dtype/device casts: rows of {phase, op, calls, bytes, cpu_s, device_s, where}
    copies: list[dict[str, Any]] = field(default_factory=list)
    # function-level profile: {sampler, rate_hz, functions: [{name, file, line, self_s, total_s, calls}],
    # pstats_file, slowdown}
    python: dict[str, Any] | None = None
    flames: list[FlameGraph] = field(default_factory=list)
    trace: list[TraceEvent] = field(default_factory=list)
    # {peak_bytes, parts: {weights, kv_cache, activations, allocator_reserve, outside_torch,
    # unattributed}, expected: {...}, kv_bytes_per_token, timeline: {...}}
    memory_by_kind: dict[str, Any] | None = None
    # per collector: {wall_s, baseline_s, slowdown, distorts: [figure names]}
    overhead: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def flame(self, name: str) -> FlameGraph | None:
        return next((f for f in self.flames if f.name == name), None)


def deep_from_dict(data: dict[str, Any]) -> DeepProfile:
    kwargs = {f.name: data[f.name] for f in dataclasses.fields(DeepProfile) if f.name in data}
    kwargs["flames"] = [
        FlameGraph(**{k: v for k, v in f.items() if k != "total"}) for f in data.get("flames", [])
    ]
    kwargs["trace"] = [TraceEvent(**t) for t in data.get("trace", [])]
    return DeepProfile(**kwargs)


def deep_to_dict(deep: DeepProfile) -> dict[str, Any]:
    data = dataclasses.asdict(deep)
    for f, out in zip(deep.flames, data["flames"]):
        out["total"] = f.total
    return data
