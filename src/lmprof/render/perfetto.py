"""The run as one timeline in the Chrome Trace Event format (Perfetto UI, chrome://tracing).

Tracks, top to bottom: phases (nested as they ran), one box per token of each generation
(prefill is token 0, then each decode step), then the deep profile's tracks (operators,
modules, kernels) when there is one; host and device memory are counter tracks.
Times are microseconds from the start of the run, so none is negative.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from lmprof.record.run import Generation, Phase, Run

PID = 1
PHASES_TID = 1
TOKENS_TID = 2
_FIRST_DEEP_TID = 3

# Counter series per memory source, as MemoryTimeline names them (units in the names).
_HOST_SERIES = ("rss_bytes", "file_rss_bytes")
_DEVICE_SERIES = ("allocated_bytes", "reserved_bytes", "nvml_used_bytes")


def to_chrome_trace(run: Run) -> dict[str, Any]:
    origin_s = _origin_s(run)

    def us(t_s: float) -> float:
        # Rounded to the nanosecond: the same rounding for a child's and its parent's
        # edges keeps a child inside its parent, which Perfetto needs to nest them.
        return round((t_s - origin_s) * 1e6, 3)

    def span(
        name: str, cat: str, tid: int, start_s: float, end_s: float, args: dict[str, Any]
    ) -> dict[str, Any]:
        ts = us(start_s)
        return {
            "name": name, "cat": cat, "ph": "X", "pid": PID, "tid": tid,
            "ts": ts, "dur": max(0.0, round(us(end_s) - ts, 3)), "args": args,
        }  # fmt: skip

    spans = [span(p.name, "phase", PHASES_TID, p.start_s, p.end_s, _phase_args(p)) for p in run.phases]
    for index, gen in enumerate(_generations(run)):
        for step, (start_s, end_s) in enumerate(token_steps(gen)):
            name = "prefill" if step == 0 else "decode step"
            args = {
                "generation": index,
                "step": step,
                "batch_size": gen.batch_size,
                "latency_s": end_s - start_s,
            }
            spans.append(span(name, "token", TOKENS_TID, start_s, end_s, args))

    # Deep tracks get their own tids even if one is named "phases" or "tokens".
    deep_tracks: dict[str, int] = {}
    for event in run.deep.trace if run.deep is not None else []:
        tid = deep_tracks.setdefault(event.track, _FIRST_DEEP_TID + len(deep_tracks))
        spans.append(
            span(
                event.name, event.cat, tid, event.start_s, event.start_s + event.dur_s, _json_safe(event.args)
            )
        )
    # Parents before children: by start, then the longer first, as trace viewers expect.
    spans.sort(key=lambda e: (e["tid"], e["ts"], -e["dur"]))

    counters = []
    memory = run.memory
    if memory is not None:
        counters += _counters("host memory", memory.host, _HOST_SERIES, us)
        if memory.device:
            counters += _counters("device memory", memory.device, _DEVICE_SERIES, us)

    model_id = (run.model or {}).get("id")
    metadata = [_meta("process_name", 0, {"name": f"lmprof {model_id}" if model_id else "lmprof"})]
    tracks = [("phases", PHASES_TID), ("tokens", TOKENS_TID), *deep_tracks.items()]
    for track, tid in tracks:
        metadata.append(_meta("thread_name", tid, {"name": track}))
        metadata.append(_meta("thread_sort_index", tid, {"sort_index": tid}))
    return {
        "traceEvents": metadata + spans + counters,
        "displayTimeUnit": "ms",
        "otherData": {
            "run_id": run.run_id,
            "lmprof_version": run.lmprof_version,
            "model": str(model_id),
            "status": run.status,
            "origin_session_s": origin_s,
        },
    }


def token_steps(gen: Generation) -> list[tuple[float, float]]:
    """(start_s, end_s) per token: prefill ends at the first token, then each decode step
    ends where the running sum of step latencies says it did."""
    steps = [(gen.first_token_s - gen.prefill_s, gen.first_token_s)]
    t = gen.first_token_s
    for latency in gen.decode_step_latencies_s:
        steps.append((t, t + latency))
        t += latency
    return steps


def _generations(run: Run) -> list[Generation]:
    if run.generations:
        return run.generations
    return [run.generation] if run.generation is not None else []


def _origin_s(run: Run) -> float:
    """The earliest phase start in practice (python_startup); anything recorded earlier
    still moves the origin back, so no timestamp is negative."""
    times = [p.start_s for p in run.phases]
    times += [start for g in _generations(run) for start, _ in token_steps(g)[:1]]
    if run.memory is not None:
        times += list(run.memory.host.get("t_s", []))
        times += list((run.memory.device or {}).get("t_s", []))
    if run.deep is not None:
        times += [e.start_s for e in run.deep.trace]
    finite = [t for t in times if t is not None and math.isfinite(t)]
    return min(finite) if finite else 0.0


def _counters(
    name: str, samples: dict[str, list[float]], series: tuple[str, ...], us: Callable[[float], float]
) -> list[dict[str, Any]]:
    """One counter event per sample, carrying every series present at that time."""
    events = []
    for i, t_s in enumerate(samples.get("t_s", [])):
        args = {}
        for key in series:
            values = samples.get(key) or []
            if i < len(values) and values[i] is not None:
                args[key] = values[i]
        events.append(
            {"name": name, "cat": "memory", "ph": "C", "pid": PID, "tid": 0, "ts": us(t_s), "args": args}
        )
    return events


def _phase_args(phase: Phase) -> dict[str, Any]:
    args: dict[str, Any] = {"wall_s": phase.wall_s, "cpu_s": phase.cpu_s, "depth": phase.depth}
    for key in (
        "rss_start_bytes", "rss_end_bytes", "rss_peak_bytes", "file_rss_start_bytes", "file_rss_end_bytes",
        "disk_read_bytes", "major_faults", "minor_faults", "device_allocated_start_bytes",
        "device_allocated_end_bytes", "device_reserved_end_bytes", "device_peak_allocated_bytes", "payload_bytes",
    ):  # fmt: skip
        value = getattr(phase, key)
        if value is not None:
            args[key] = value
    if phase.payload_gbps is not None:
        args["payload_gbps"] = phase.payload_gbps
    if not phase.complete:
        args["complete"] = False
    if phase.detail:
        args["detail"] = _json_safe(phase.detail)
    return args


def _meta(name: str, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": PID, "tid": tid, "args": args}


def _json_safe(value: Any) -> Any:
    """Args are free-form; anything JSON cannot hold is shown as its str()."""
    return json.loads(json.dumps(value, default=str))
