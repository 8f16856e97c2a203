"""Memory by kind at the profiled call's peak: weights, KV cache, activations and
temporaries, allocator reserve, memory outside torch; beside the analytic expectation
from the model config. The parts add up to the measured figure, with the remainder
shown as unattributed. Pure: takes the Run's numbers and the trace's allocator events.
"""

from __future__ import annotations

import bisect
from typing import Any

from lmprof.record.run import Run

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


def expected_memory(model: dict[str, Any], tokens: int, batch: int) -> dict[str, Any]:
    """Analytic expectation from the config (bytes). The activation figure is a rough
    estimate: the MLP's two intermediate tensors and four hidden-size tensors per token
    of the widest step (prefill), plus fp32 logits for the last position."""
    cfg = model.get("config", {})
    b = DTYPE_BYTES.get(model.get("dtype", "float32"), 4)
    layers = cfg.get("num_hidden_layers", 0)
    heads = cfg.get("num_attention_heads", 1)
    kv_heads = cfg.get("num_key_value_heads", heads)
    hidden = cfg.get("hidden_size", 0)
    head_dim = cfg.get("head_dim") or (hidden // heads if heads else 0)
    kv_per_token = 2 * layers * kv_heads * head_dim * b
    act = (
        batch * tokens * (2 * cfg.get("intermediate_size", 0) + 4 * hidden) * b
        + batch * cfg.get("vocab_size", 0) * 4
    )
    return {
        "weights": int(model.get("parameter_count", 0) * b),
        "kv_cache": int(kv_per_token * tokens * batch),
        "kv_bytes_per_token": int(kv_per_token * batch),
        "activations_estimate": int(act),
    }


def host_memory_by_kind(
    run: Run,
    window: tuple[float, float],
    kv_samples: list[tuple[float, int]],
    torch_cpu_allocated: list[tuple[float, int]],
) -> dict[str, Any] | None:
    """Split host RSS at its highest sample inside `window` (the profiled generate call).

    RSS = file-backed pages + anonymous pages. File-backed: mapped weights (pages gained
    since loading began, at most the weights' size) and libraries (the rest). Anonymous:
    torch's CPU allocations (from the profiler's allocator events) split into KV cache
    (measured from the cache tensors), weights held in torch memory (not mapped), and
    activations/temporaries (the rest); what torch did not allocate is outside torch
    (Python heap, tokenizer, malloc slack)."""
    mem = run.memory
    if mem is None or not mem.host.get("t_s") or run.model is None:
        return None
    t, rss, frss = mem.host["t_s"], mem.host["rss_bytes"], mem.host["file_rss_bytes"]
    lo, hi = bisect.bisect_left(t, window[0]), bisect.bisect_right(t, window[1])
    if lo >= hi:
        return None
    i = max(range(lo, hi), key=rss.__getitem__)
    t_peak, rss_peak, file_peak = t[i], rss[i], frss[i]
    load = next((p for p in run.phases if p.name == "load_model"), None)
    file_before = load.file_rss_start_bytes if load else 0
    weight_bytes = (
        int(run.model.get("weight_bytes", 0)) if str(run.model.get("device", "cpu")).startswith("cpu") else 0
    )
    weights_mapped = min(max(file_peak - file_before, 0), weight_bytes)
    libraries = file_peak - weights_mapped
    anon = rss_peak - file_peak
    kv = _last_at(kv_samples, t_peak) or 0
    allocated = _last_at(torch_cpu_allocated, t_peak)
    parts: dict[str, int] = {"weights_mapped": weights_mapped, "libraries_and_mapped_files": libraries}
    if allocated is not None:
        weights_in_torch = min(max(weight_bytes - weights_mapped, 0), max(allocated - kv, 0))
        parts["weights_in_torch_memory"] = weights_in_torch
        parts["kv_cache"] = min(kv, allocated)
        parts["activations_and_temporaries"] = max(allocated - parts["kv_cache"] - weights_in_torch, 0)
        parts["outside_torch"] = max(anon - allocated, 0)
    else:
        parts["kv_cache"] = kv
        parts["anonymous_other"] = max(anon - kv, 0)
    parts["unattributed"] = rss_peak - sum(parts.values())
    return {"where": "host", "t_s": t_peak, "measured_bytes": rss_peak, "measured": "RSS", "parts": parts}


def device_memory_by_kind(
    run: Run, window: tuple[float, float], kv_samples: list[tuple[float, int]]
) -> dict[str, Any] | None:
    """Split device memory at the highest NVML/allocator sample inside `window`: weights,
    KV cache, activations (allocated minus both), allocator reserve (reserved minus
    allocated: cached blocks and fragmentation), and outside torch (NVML used minus
    reserved: the CUDA context, libraries' workspaces, other processes)."""
    dev = run.memory.device if run.memory else None
    if not dev or not dev.get("t_s") or run.model is None:
        return None
    t = dev["t_s"]
    lo, hi = bisect.bisect_left(t, window[0]), bisect.bisect_right(t, window[1])
    if lo >= hi:
        return None
    i = max(range(lo, hi), key=lambda j: dev["allocated_bytes"][j])
    allocated, reserved, used = dev["allocated_bytes"][i], dev["reserved_bytes"][i], dev["nvml_used_bytes"][i]
    weights = int(run.model.get("weight_bytes", 0))
    kv = _last_at(kv_samples, t[i]) or 0
    parts = {
        "weights": min(weights, allocated),
        "kv_cache": min(kv, max(allocated - weights, 0)),
    }
    parts["activations_and_temporaries"] = max(allocated - parts["weights"] - parts["kv_cache"], 0)
    parts["allocator_reserve"] = reserved - allocated
    measured = used if used is not None else reserved
    if used is not None:
        parts["outside_torch"] = max(used - reserved, 0)
    parts["unattributed"] = measured - sum(parts.values())
    return {
        "where": "device",
        "t_s": t[i],
        "measured_bytes": measured,
        "measured": "NVML used" if used is not None else "reserved",
        "parts": parts,
    }


def _last_at(samples: list[tuple[float, int]], t_s: float) -> int | None:
    value = None
    for t, v in samples:
        if t > t_s:
            break
        value = v
    return value
