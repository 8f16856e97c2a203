"""Figures of a load run, and of two load runs side by side. Pure: LoadRun -> summaries.

Definitions follow vLLM's serving benchmark (`vllm bench serve`), per measured request:
TTFT = first content chunk - send; E2EL = last content chunk - send (non-streaming: response
end - send); TPOT = (E2EL - TTFT) / (output tokens - 1); ITL = every gap between content
chunks, pooled over requests. Throughputs divide by the level's wall time, from its start
to its last response. Percentiles interpolate linearly (numpy's default, as vLLM's).
Besides, each latency is also given from the request's *scheduled* time, which adds the
client's own queueing: see docs/throughput-lab.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lmprof.record.load import (
    ERROR_CANCELLED,
    MODE_CLOSED,
    LevelRecord,
    LoadRun,
    MetricsSample,
    RequestRecord,
)

PERCENTILES = (50, 90, 95, 99)
CLIENT_CPU_LIMIT = 0.8  # share of one core above which the client may be the bottleneck
LOOP_LAG_LIMIT_S = 0.010  # event-loop lag p99 above which the client may be the bottleneck

# Server gauges and counters, by what they mean; the first name present is used.
RUNNING = (
    "vllm:num_requests_running", "lmprof:num_requests_running", "sglang:num_running_reqs",
    "tgi_batch_current_size", "llamacpp:requests_processing",
)  # fmt: skip
WAITING = (
    "vllm:num_requests_waiting", "lmprof:num_requests_waiting", "sglang:num_queue_reqs",
    "tgi_queue_size", "llamacpp:requests_deferred",
)  # fmt: skip
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_PAIRS = (  # (hits, queries) counters
    ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
    ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"),
    ("lmprof:response_cache_hits_total", "lmprof:response_cache_queries_total"),
)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy.percentile's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of nothing")
    rank = (len(ordered) - 1) * p / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def distribution(values: Iterable[float]) -> dict[str, float] | None:
    """mean, p50/p90/p95/p99 and max; None for no values."""
    vals = list(values)
    if not vals:
        return None
    out = {"mean": sum(vals) / len(vals)}
    out.update({f"p{p}": percentile(vals, p) for p in PERCENTILES})
    out["max"] = max(vals)
    out["n"] = float(len(vals))
    return out


# --- one request ---------------------------------------------------------------------


def ttft_s(r: RequestRecord, from_scheduled: bool = False) -> float | None:
    if r.first_token_s is None:
        return None
    return r.first_token_s - (r.scheduled_s if from_scheduled else r.sent_s)


def e2el_s(r: RequestRecord, from_scheduled: bool = False) -> float | None:
    if r.last_token_s is None:
        return None
    return r.last_token_s - (r.scheduled_s if from_scheduled else r.sent_s)


def tpot_s(r: RequestRecord) -> float | None:
    if r.first_token_s is None or r.last_token_s is None or not r.output_tokens or r.output_tokens < 2:
        return None
    return (r.last_token_s - r.first_token_s) / (r.output_tokens - 1)


def meets_slo(r: RequestRecord, slo_s: dict[str, float], from_scheduled: bool = False) -> bool:
    """A request meets the SLOs when it succeeded and every named figure is within its bound;
    a figure it lacks (TTFT of a non-streamed request) does not meet one."""
    if not r.ok:
        return False
    values = {
        "ttft": ttft_s(r, from_scheduled),
        "tpot": tpot_s(r),
        "e2el": e2el_s(r, from_scheduled),
        "itl": max(r.chunk_gaps_s) if r.chunk_gaps_s else None,
    }
    return all(values[name] is not None and values[name] <= bound for name, bound in slo_s.items())


# --- one level -----------------------------------------------------------------------


@dataclass
class LevelSummary:
    index: int
    title: str
    mode: str
    concurrency: int | None
    rate_rps: float | None
    duration_s: float
    sent: int
    completed: int
    cancelled: int
    errors: dict[str, dict] = field(default_factory=dict)  # kind -> {"count", "latency_s": dist}
    request_rps: float = 0.0
    output_tps: float = 0.0
    total_tps: float = 0.0
    offered_rps: float | None = None  # open loop: what arrived per second
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: dict[str, dict | None] = field(default_factory=dict)  # ttft, tpot, itl, e2el
    scheduled_latency_s: dict[str, dict | None] = field(default_factory=dict)  # ttft, e2el
    client_queue_s: dict | None = None  # sent - scheduled
    goodput: dict | None = None
    client_cpu_share: float | None = None
    loop_lag_s: dict | None = None
    count_methods: dict[str, int] = field(default_factory=dict)
    server: dict[str, float | None] = field(default_factory=dict)
    complete: bool = True
    label: str = ""


def level_title(level: LevelRecord) -> str:
    if level.mode == MODE_CLOSED:
        return f"{level.label + ' ' if level.label else ''}concurrency {level.concurrency}"
    cap = f", max {level.max_concurrency} in flight" if level.max_concurrency else ""
    burst = f", burstiness {level.burstiness:g}" if level.burstiness != 1.0 else ""
    rate = f"rate {level.rate_rps:.3g} req/s" if level.rate_rps is not None else "rate inf (all at once)"
    return f"{rate}{burst}{cap}"


def summarize_level(run: LoadRun, level: LevelRecord, slo_s: dict[str, float] | None = None) -> LevelSummary:
    reqs = [r for r in run.requests if r.level == level.index and not r.warmup]
    live = [r for r in reqs if r.error_kind != ERROR_CANCELLED]
    ok = [r for r in live if r.ok]
    duration = max(level.end_s - level.start_s, 1e-9)
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    in_tokens = sum(r.input_tokens or 0 for r in ok)
    errors: dict[str, dict] = {}
    for kind in sorted({r.error_kind for r in live if not r.ok}):
        failed = [r for r in live if r.error_kind == kind]
        errors[kind] = {
            "count": len(failed),
            "latency_s": distribution(r.end_s - r.sent_s for r in failed),
            "example": failed[0].error,
        }
    s = LevelSummary(
        index=level.index, title=level_title(level), mode=level.mode, concurrency=level.concurrency,
        rate_rps=level.rate_rps, duration_s=duration, sent=len(live), completed=len(ok),
        cancelled=len(reqs) - len(live), errors=errors, request_rps=len(ok) / duration,
        output_tps=out_tokens / duration, total_tps=(in_tokens + out_tokens) / duration,
        input_tokens=in_tokens, output_tokens=out_tokens, complete=level.complete, label=level.label,
    )  # fmt: skip
    if level.mode != MODE_CLOSED:
        s.offered_rps = len(live) / duration
    s.latency_s = {
        "ttft": distribution(v for v in (ttft_s(r) for r in ok) if v is not None),
        "tpot": distribution(v for v in (tpot_s(r) for r in ok) if v is not None),
        "itl": distribution(g for r in ok for g in r.chunk_gaps_s),
        "e2el": distribution(v for v in (e2el_s(r) for r in ok) if v is not None),
    }
    s.scheduled_latency_s = {
        "ttft": distribution(v for v in (ttft_s(r, True) for r in ok) if v is not None),
        "e2el": distribution(v for v in (e2el_s(r, True) for r in ok) if v is not None),
    }
    s.client_queue_s = distribution(r.sent_s - r.scheduled_s for r in live)
    slo = (run.settings.get("slo_s") or {}) if slo_s is None else slo_s
    if slo and live:
        good = sum(meets_slo(r, slo) for r in live)
        good_sched = sum(meets_slo(r, slo, True) for r in live)
        s.goodput = {
            "slo_s": dict(slo),
            "share": good / len(live),
            "rps": good / duration,
            "share_from_scheduled": good_sched / len(live),
            "rps_from_scheduled": good_sched / duration,
        }
    s.client_cpu_share = level.cpu_s / duration if level.end_s > level.start_s else None
    s.loop_lag_s = distribution(level.loop_lag_s)
    s.count_methods = dict(Counter(r.output_tokens_method for r in ok if r.output_tokens_method))
    s.server = server_figures(run.metrics, level.start_s, level.end_s)
    return s


# --- the server's own view ---------------------------------------------------------------


def _first_name(sample: MetricsSample, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in sample.values), None)


def server_figures(samples: Sequence[MetricsSample], start_s: float, end_s: float) -> dict[str, float | None]:
    """Gauges over the window (mean and max of running/waiting, max KV usage) and the prefix
    cache hit rate from the counters' change across it."""
    inside = [m for m in samples if start_s <= m.t_s <= end_s]
    out: dict[str, float | None] = {}
    for key, names in (("running", RUNNING), ("waiting", WAITING), ("kv_cache_usage", KV_USAGE)):
        vals = [m.values[n] for m in inside if (n := _first_name(m, names))]
        if vals:
            out[f"{key}_mean"] = sum(vals) / len(vals)
            out[f"{key}_max"] = max(vals)
    before = [m for m in samples if m.t_s <= start_s]
    after = [m for m in samples if m.t_s >= end_s]
    first = before[-1] if before else (inside[0] if inside else None)
    last = after[0] if after else (inside[-1] if inside else None)
    if first is not None and last is not None and last is not first:
        for hits, queries in PREFIX_PAIRS:
            if hits in first.values and queries in last.values:
                d_q = last.values[queries] - first.values.get(queries, 0.0)
                d_h = last.values[hits] - first.values[hits]
                out["prefix_cache_hit_rate"] = d_h / d_q if d_q > 0 else None
                break
    return out


# --- the whole run ------------------------------------------------------------------------


@dataclass
class LoadSummary:
    levels: list[LevelSummary]
    warnings: list[str]
    warmup_requests: int
    model: str | None


def summarize(run: LoadRun, slo_s: dict[str, float] | None = None) -> LoadSummary:
    levels = [summarize_level(run, level, slo_s) for level in run.levels]
    return LoadSummary(
        levels=levels,
        warnings=list(run.warnings) + client_warnings(levels) + count_warnings(run, levels),
        warmup_requests=sum(1 for r in run.requests if r.warmup and r.user is not None),  # not the preflight
        model=run.server.get("model"),
    )


def client_warnings(levels: Sequence[LevelSummary]) -> list[str]:
    """Where the client may have been the bottleneck: its latencies are then partly its own."""
    out = []
    for s in levels:
        if s.client_cpu_share is not None and s.client_cpu_share > CLIENT_CPU_LIMIT:
            out.append(
                f"WARN {s.title}: the client used {s.client_cpu_share * 100:.0f}% of a CPU core; it may "
                "be the bottleneck (its own work is in the latencies): use fewer streams per client"
            )
        lag = s.loop_lag_s
        if lag is not None and lag["p99"] > LOOP_LAG_LIMIT_S:
            busy = s.client_cpu_share is not None and s.client_cpu_share > CLIENT_CPU_LIMIT / 2
            why = (
                "its own work"
                if busy
                else "other processes taking the CPU (the client itself was mostly idle)"
            )
            out.append(
                f"WARN {s.title}: the client's event loop woke {lag['p99'] * 1e3:.1f} ms late at p99 ({why}); "
                "its sends and timestamps were late by as much"
            )
    return out


# An answer under this share of the tokens asked was cut short: a client tokenizer re-counting the
# text may differ from the server's count by a token or two, so a small shortfall is no sign.
SHORT_ANSWER_SHARE = 0.9


def count_warnings(run: LoadRun, levels: Sequence[LevelSummary]) -> list[str]:
    out = []
    methods = Counter()
    for s in levels:
        methods.update(s.count_methods)
    fallback = {m: n for m, n in methods.items() if m != "usage"}
    if fallback:
        what = ", ".join(f"{n} by {m}" for m, n in sorted(fallback.items()))
        out.append(
            f"output tokens not from the server's usage for some requests ({what}): TPOT is approximate"
        )
    if run.settings.get("ignore_eos_sent") is False:
        out.append("ignore_eos was not sent (the server refused it): outputs may end before the tokens asked")
    short = [
        r for r in run.requests
        if not r.warmup and r.error_kind is None and r.planned_output_tokens and r.output_tokens is not None
        and r.output_tokens < SHORT_ANSWER_SHARE * r.planned_output_tokens
    ]  # fmt: skip
    if short:
        answered = sum(1 for r in run.requests if not r.warmup and r.error_kind is None)
        lengths = sorted(r.output_tokens for r in short)
        asked = sorted({r.planned_output_tokens for r in short})  # several with --range-ratio
        asked_text = str(asked[0]) if len(asked) == 1 else f"{asked[0]}-{asked[-1]}"
        out.append(
            f"WARN {len(short)} of {answered} answers ended well before the {asked_text} "
            f"tokens asked (median {lengths[len(lengths) // 2]}): the server stopped them early (an EOS it did not "
            "ignore, a stop string, or a stream cut short); throughput and TPOT describe shorter answers"
        )
    return out


# --- throughput over time (for the HTML report) ----------------------------------------------


def output_tokens_over_time(run: LoadRun, bin_s: float = 1.0) -> tuple[list[float], list[float]]:
    """(bin start times, output tokens/s in each bin) over measured requests: each request's
    tokens are spread evenly over its content chunks, at the chunks' arrival times."""
    events: list[tuple[float, float]] = []
    for r in run.requests:
        if r.warmup or not r.ok or not r.output_tokens:
            continue
        if r.first_token_s is None:  # not streamed: all tokens at the end
            events.append((r.end_s, float(r.output_tokens)))
            continue
        times = [r.first_token_s]
        for gap in r.chunk_gaps_s:
            times.append(times[-1] + gap)
        share = r.output_tokens / len(times)
        events += [(t, share) for t in times]
    if not events:
        return [], []
    end = max(t for t, _ in events)
    bins = [0.0] * (int(end / bin_s) + 1)
    for t, n in events:
        bins[int(t / bin_s)] += n / bin_s
    return [i * bin_s for i in range(len(bins))], bins
