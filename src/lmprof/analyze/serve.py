"""Figures of a serve Run: per-phase percentiles, throughput, the batch-size histogram, memory
peaks. Pure: a ServeRun in, plain numbers out (render/serve_terminal.py prints them)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lmprof.analyze.generation import percentile
from lmprof.record.serve import ServedRequest, ServeRun

PERCENTILES = (50, 90, 99)

# Each phase as (name, from mark, to mark) on the request's timeline.
PHASES = (
    ("wait", "arrived_s", "admitted_s"),  # reading, checking, encoding; sequential: and the lock
    ("queued", "admitted_s", "started_s"),  # in the worker's queue (async, static-batch)
    ("prefill", "started_s", "first_token_s"),  # its batch's prompt forward and first pick
    ("decode+stream", "first_token_s", "responded_s"),  # decode steps and writing to the client
    ("ttft", "arrived_s", "first_token_s"),
    ("e2e", "arrived_s", "responded_s"),
)


@dataclass
class PhaseFigures:
    name: str
    count: int
    percentiles_s: dict[int, float]
    mean_s: float


@dataclass
class ServeFigures:
    requests: int
    outcomes: dict[str, int]
    statuses: dict[int, int]
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    busy_s: float  # time the model thread spent in forwards
    output_tokens_per_s: float | None  # completion tokens over the first arrival..last response
    phases: list[PhaseFigures]
    batch_sizes: dict[int, int]  # rows per engine step -> steps
    mean_occupancy: float | None  # active rows / batch rows, over decode steps
    peak_rss_bytes: int | None
    peak_device_bytes: int | None


def _span(request: ServedRequest, start: str, end: str) -> float | None:
    a, b = getattr(request, start), getattr(request, end)
    return None if a is None or b is None else b - a


def phase_figures(requests: list[ServedRequest]) -> list[PhaseFigures]:
    figures = []
    for name, start, end in PHASES:
        spans = [s for r in requests if r.status == 200 and (s := _span(r, start, end)) is not None]
        if spans:
            pcts = {q: percentile(spans, q) for q in PERCENTILES}
            figures.append(PhaseFigures(name, len(spans), pcts, sum(spans) / len(spans)))
    return figures


def serve_figures(run: ServeRun) -> ServeFigures:
    reqs = run.requests
    answered = [r for r in reqs if r.status == 200]
    completion = sum(r.completion_tokens for r in answered)
    first = min((r.arrived_s for r in answered), default=None)
    last = max((r.responded_s for r in answered if r.responded_s is not None), default=None)
    window_s = (last - first) if first is not None and last is not None else 0.0
    decode = [s for s in run.steps if s.kind == "decode" and s.batch_size]
    return ServeFigures(
        requests=len(reqs),
        outcomes=dict(Counter(r.outcome for r in reqs)),
        statuses=dict(Counter(r.status for r in reqs)),
        prompt_tokens=sum(r.prompt_tokens for r in answered),
        completion_tokens=completion,
        wall_s=run.ended_s,
        busy_s=sum(s.end_s - s.start_s for s in run.steps),
        output_tokens_per_s=completion / window_s if window_s > 0 else None,
        phases=phase_figures(reqs),
        batch_sizes=dict(sorted(Counter(s.batch_size for s in run.steps).items())),
        mean_occupancy=sum(s.active_rows / s.batch_size for s in decode) / len(decode) if decode else None,
        peak_rss_bytes=max((m.rss_bytes for m in run.memory), default=None),
        peak_device_bytes=max(
            (m.device_allocated_bytes for m in run.memory if m.device_allocated_bytes is not None),
            default=None,
        ),
    )
