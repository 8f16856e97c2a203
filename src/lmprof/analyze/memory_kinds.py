"""Memory by kind at the profiled call's own peak of live memory (torch's allocator events):
weights, KV cache, activations and temporaries, allocator and heap slack (freed but still
resident), memory outside torch; beside the analytic expectation from the model config. The
parts add up to RSS on the host and to reserved memory on the device, with the remainder
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


def live_peak(live: list[tuple[float, int]], window: tuple[float, float]) -> tuple[float, int] | None:
    """(time, bytes) of the highest live-bytes figure inside `window`: the workload's own peak."""
    inside = [(t, b) for t, b in live if window[0] <= t <= window[1]]
    return max(inside, key=lambda e: e[1]) if inside else None


def kv_leaving_step(kv_samples: list[tuple[float, int]], t_s: float) -> int:
    """The KV cache as the step running at t_s leaves it. Samples are taken as each forward
    starts, so that is the next forward's sample (the last one, past the final forward)."""
    later = [b for t, b in kv_samples if t > t_s]
    if later:
        return later[0]
    return kv_samples[-1][1] if kv_samples else 0


def host_memory_by_kind(
    run: Run,
    window: tuple[float, float],
    kv_samples: list[tuple[float, int]],
    torch_cpu_allocated: list[tuple[float, int]],
) -> dict[str, Any] | None:
    """Split host RSS at the profiled call's own peak of live torch memory.

    The moment is the highest live-bytes figure of torch's CPU allocator events inside
    `window` (bytes allocated during the call and not yet freed; torch.profiler counts only
    those), and RSS is the highest sample within one sampling interval of it. RSS = file-backed
    pages + anonymous pages. File-backed: mapped weights (pages gained since loading began, at
    most the weights' size) and libraries (the rest). Anonymous, against the call's start:
    what was there before the call is weights held in torch memory (the weights not mapped)
    and memory outside torch (Python heap, tokenizer, libraries); what the call added is its
    live torch bytes, split into the KV cache (measured from the cache tensors as that step
    leaves it) and activations/temporaries, and allocator and heap slack: memory the call
    freed that stays resident (malloc arenas, torch's allocator). Without allocator events the
    moment is the highest RSS sample and the anonymous pages are not split."""
    mem = run.memory
    if mem is None or not mem.host.get("t_s") or run.model is None:
        return None
    t, rss, frss = mem.host["t_s"], mem.host["rss_bytes"], mem.host["file_rss_bytes"]
    peak = live_peak(torch_cpu_allocated, window)
    span = (peak[0] - mem.interval_s, peak[0] + mem.interval_s) if peak else window
    lo, hi = bisect.bisect_left(t, span[0]), bisect.bisect_right(t, span[1])
    if lo >= hi and peak is not None:  # no sample that close: the nearest one
        j = min(range(len(t)), key=lambda k: abs(t[k] - peak[0]))
        lo, hi = j, j + 1
    if lo >= hi:
        return None
    i = max(range(lo, hi), key=rss.__getitem__)
    t_peak, rss_peak, file_peak = (peak[0] if peak else t[i]), rss[i], frss[i]
    load = next((p for p in run.phases if p.name == "load_model"), None)
    file_before = load.file_rss_start_bytes if load else 0
    weight_bytes = (
        int(run.model.get("weight_bytes", 0)) if str(run.model.get("device", "cpu")).startswith("cpu") else 0
    )
    weights_mapped = min(max(file_peak - file_before, 0), weight_bytes)
    parts: dict[str, int] = {
        "weights_mapped": weights_mapped,
        "libraries_and_mapped_files": file_peak - weights_mapped,
    }
    anon = rss_peak - file_peak
    if peak is None:
        kv = _last_at(kv_samples, t_peak) or 0
        parts["kv_cache"] = kv
        parts["anonymous_other"] = max(anon - kv, 0)
    else:
        j = max(bisect.bisect_right(t, window[0]) - 1, 0)  # the last sample before the call began
        anon_before = rss[j] - frss[j]
        weights_in_torch = min(max(weight_bytes - weights_mapped, 0), anon_before)
        live = peak[1]
        parts["weights_in_torch_memory"] = weights_in_torch
        parts["kv_cache"] = min(kv_leaving_step(kv_samples, t_peak), live)
        parts["activations_and_temporaries"] = live - parts["kv_cache"]
        parts["allocator_and_heap_slack"] = max(anon - anon_before - live, 0)
        parts["outside_torch"] = anon_before - weights_in_torch
    parts["unattributed"] = rss_peak - sum(parts.values())
    return {
        "where": "host",
        "t_s": t_peak,
        "measured_bytes": rss_peak,
        "measured": "RSS",
        "moment": "peak of live torch memory" if peak else "highest RSS sample",
        "live_bytes": peak[1] if peak else None,
        "parts": parts,
    }


def device_memory_by_kind(
    run: Run,
    window: tuple[float, float],
    kv_samples: list[tuple[float, int]],
    cuda_live: list[tuple[float, int, int]] | None = None,
) -> dict[str, Any] | None:
    """Split device memory at the profiled call's peak of allocated CUDA memory.

    With the CUDA allocator's events (`cuda_live`: time, allocated, reserved) the moment is the
    highest allocated figure inside `window`, and the parts add up to reserved memory: weights,
    KV cache, activations (allocated minus both) and allocator slack (reserved minus
    allocated: cached blocks and fragmentation). What NVML saw beyond reserved (the CUDA
    context, libraries' workspaces, other processes) is given beside it. Without events, the
    highest allocated sample of the memory timeline is the moment."""
    dev = run.memory.device if run.memory else None
    if run.model is None:
        return None
    inside = [e for e in cuda_live or [] if window[0] <= e[0] <= window[1]]
    used = None
    if inside:
        t_peak, allocated, reserved = max(inside, key=lambda e: e[1])
        if dev and dev.get("t_s"):
            k = min(range(len(dev["t_s"])), key=lambda j: abs(dev["t_s"][j] - t_peak))
            used = dev["nvml_used_bytes"][k]
    else:
        if not dev or not dev.get("t_s"):
            return None
        t = dev["t_s"]
        lo, hi = bisect.bisect_left(t, window[0]), bisect.bisect_right(t, window[1])
        if lo >= hi:
            return None
        i = max(range(lo, hi), key=lambda j: dev["allocated_bytes"][j])
        t_peak, allocated, reserved = t[i], dev["allocated_bytes"][i], dev["reserved_bytes"][i]
        used = dev["nvml_used_bytes"][i]
    weights = int(run.model.get("weight_bytes", 0))
    parts = {"weights": min(weights, allocated)}
    parts["kv_cache"] = min(kv_leaving_step(kv_samples, t_peak), max(allocated - weights, 0))
    parts["activations_and_temporaries"] = max(allocated - parts["weights"] - parts["kv_cache"], 0)
    parts["allocator_slack"] = max(reserved - allocated, 0)
    parts["unattributed"] = reserved - sum(parts.values())
    return {
        "where": "device",
        "t_s": t_peak,
        "measured_bytes": reserved,
        "measured": "reserved",
        "moment": "peak of allocated CUDA memory",
        "beyond_reserved_bytes": max(used - reserved, 0) if used is not None else None,
        "parts": parts,
    }


def _last_at(samples: list[tuple[float, int]], t_s: float) -> int | None:
    value = None
    for t, v in samples:
        if t > t_s:
            break
        value = v
    return value
