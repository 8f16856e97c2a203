"""Figures of a throughput report (lmprof.record.throughput), derived from its load runs.

Pure: the report in, numbers out. A point's figures come from lmprof load's own summary of
its level (the field's definitions: TTFT, TPOT, goodput under the report's objective). A
row's figure at a concurrency is the median over rounds; a gain is paired: the ratio to the
baseline row measured in the same round at the same concurrency (both saw the same machine),
its median over rounds with the lowest and highest round beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmprof.analyze.ablation import BUSY_SHARE
from lmprof.analyze.load import distribution, server_figures, summarize_level
from lmprof.record.load import LoadRun
from lmprof.record.throughput import BenchPoint, BenchRow, ThroughputReport

KV_BYTES = "lmprof:kv_cache_bytes"
RESPONSE_PAIR = ("lmprof:response_cache_hits_total", "lmprof:response_cache_queries_total")
PREFIX_PAIR = ("lmprof:prefix_cache_hits_total", "lmprof:prefix_cache_queries_total")
# Targets of the throughput-lab issue (paired, same run).
CONTINUOUS_GAIN_TARGET = 4.0
CONTINUOUS_TARGET_USERS = 8
# The continuous-batching targets are judged on each of these the report has rows on.
BATCHING_WORKLOADS = ("no-sharing", "mixed-lengths")
RESPONSE_HIT_TARGET_S = 0.005
PREFIX_TTFT_CUT_TARGET = 3.0


@dataclass
class PointFigures:
    completed: int = 0
    failed: int = 0
    output_tps: float = 0.0
    request_rps: float = 0.0
    goodput_rps: float | None = None
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p99_s: float | None = None
    rss_peak_bytes: int | None = None
    kv_bytes_max: float | None = None
    prefix_hit_rate: float | None = None
    response_hit_rate: float | None = None
    repeat_end_s: list[float] = field(default_factory=list)  # send to the last byte, repeated prompts
    busy: bool = False


def _delta_rate(run: LoadRun, start_s: float, end_s: float, pair: tuple[str, str]) -> float | None:
    hits, queries = pair
    before = [m for m in run.metrics if m.t_s <= start_s and queries in m.values]
    after = [m for m in run.metrics if m.t_s >= end_s and queries in m.values]
    if not before or not after:
        return None
    d_q = after[0].values[queries] - before[-1].values[queries]
    d_h = after[0].values.get(hits, 0.0) - before[-1].values.get(hits, 0.0)
    return d_h / d_q if d_q > 0 else None


def point_figures(point: BenchPoint, slo_s: dict[str, float] | None = None) -> PointFigures:
    out = PointFigures(rss_peak_bytes=point.server_rss_peak_bytes)
    out.busy = (point.other_cpu_share or 0.0) > BUSY_SHARE
    if not point.load:
        return out
    run = LoadRun.from_dict(point.load)
    if not run.levels:
        return out
    level = run.levels[0]
    s = summarize_level(run, level, slo_s)
    out.completed, out.failed = s.completed, s.sent - s.completed
    out.output_tps, out.request_rps = s.output_tps, s.request_rps
    out.goodput_rps = s.goodput["rps"] if s.goodput else None
    for name in ("ttft", "tpot"):
        dist = s.latency_s.get(name)
        if dist:
            setattr(out, f"{name}_p50_s", dist["p50"])
            setattr(out, f"{name}_p99_s", dist["p99"])
    kv = [
        m.values[KV_BYTES]
        for m in run.metrics
        if level.start_s <= m.t_s <= level.end_s and KV_BYTES in m.values
    ]
    out.kv_bytes_max = max(kv) if kv else None
    out.prefix_hit_rate = _delta_rate(run, level.start_s, level.end_s, PREFIX_PAIR)
    out.response_hit_rate = _delta_rate(run, level.start_s, level.end_s, RESPONSE_PAIR)
    if out.prefix_hit_rate is None and out.response_hit_rate is None:
        out.prefix_hit_rate = server_figures(run.metrics, level.start_s, level.end_s).get(
            "prefix_cache_hit_rate"
        )
    out.repeat_end_s = [
        r.end_s - r.sent_s
        for r in run.requests
        if r.level == level.index and not r.warmup and r.ok and r.repeat_of is not None
    ]
    return out


@dataclass
class Spread:
    median: float
    lo: float
    hi: float
    rounds: int


def spread(values: Sequence[float | None]) -> Spread | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), len(present))


@dataclass
class Cell:
    """One row at one concurrency, over rounds."""

    row: BenchRow
    concurrency: int
    rounds: dict[int, PointFigures]
    errors: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        s = spread([getattr(f, name) for f in self.rounds.values()])
        return s.median if s else None

    @property
    def hit_rate(self) -> float | None:
        """The hit rate of the row's cache (the prefix cache's where it has both)."""
        name = "prefix_hit_rate" if self.row.prefix_cache else "response_hit_rate"
        return self.median(name) if (self.row.prefix_cache or self.row.response_cache) else None


@dataclass
class Gain:
    output_tps: Spread | None
    request_rps: Spread | None
    goodput_rps: Spread | None


def paired_gain(cell: Cell, base: Cell | None) -> Gain | None:
    if base is None or cell is base:
        return None

    def ratios(name: str) -> Spread | None:
        pairs = []
        for k, fig in cell.rounds.items():
            ref = base.rounds.get(k)
            a, b = getattr(fig, name), getattr(ref, name) if ref is not None else None
            if a is not None and b:
                pairs.append(a / b)
        return spread(pairs)

    return Gain(ratios("output_tps"), ratios("request_rps"), ratios("goodput_rps"))


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this report


@dataclass
class ThroughputSummary:
    cells: list[Cell]
    gains: dict[tuple[str, int], Gain | None]  # over sequential of the same workload
    base_gains: dict[tuple[str, int], Gain | None]  # cache rows: over the same scheduler without caches
    targets: list[Target]
    warnings: list[str]


def _cells(report: ThroughputReport, slo_s: dict[str, float]) -> list[Cell]:
    rows = {r.name: r for r in report.rows}
    by_key: dict[tuple[str, int], Cell] = {}
    levels = report.settings.get("concurrency") or sorted({p.concurrency for p in report.points})
    for row in report.rows:
        for c in levels:
            by_key[(row.name, c)] = Cell(row, c, {})
    for point in report.points:
        cell = by_key.get((point.row, point.concurrency))
        if cell is None and point.row in rows:
            cell = by_key[(point.row, point.concurrency)] = Cell(rows[point.row], point.concurrency, {})
        if cell is None:
            continue
        if point.error:
            cell.errors.append(f"round {point.round}: {point.error}")
            continue
        cell.rounds[point.round] = point_figures(point, slo_s)
    return list(by_key.values())


def _find(cells: Sequence[Cell], workload: str, technique: str, concurrency: int) -> Cell | None:
    return next(
        (
            c
            for c in cells
            if c.row.workload == workload and c.row.technique == technique and c.concurrency == concurrency
        ),
        None,
    )


def summarize_throughput(report: ThroughputReport) -> ThroughputSummary:
    slo_s = report.settings.get("slo_s") or {}
    cells = _cells(report, slo_s)
    gains, base_gains = {}, {}
    for cell in cells:
        key = (cell.row.name, cell.concurrency)
        gains[key] = paired_gain(cell, _find(cells, cell.row.workload, "sequential", cell.concurrency))
        if cell.row.prefix_cache or cell.row.response_cache:
            base = _find(cells, cell.row.workload, cell.row.scheduler, cell.concurrency)
            base_gains[key] = paired_gain(cell, base)
    planned = {row.workload for row in report.rows}
    batching = [w for w in BATCHING_WORKLOADS if w in planned] or [BATCHING_WORKLOADS[0]]
    targets = [t for w in batching for t in _batching_targets(cells, w)] + _cache_targets(cells)
    return ThroughputSummary(cells, gains, base_gains, targets, _warnings(report, cells))


def _fmt_ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.1f} ms"


def _batching_targets(cells: Sequence[Cell], workload: str) -> list[Target]:
    """Continuous batching at 8 users on one workload: its output tok/s over sequential's
    (tokens received, so varied lengths count as served), and its p99 TTFT against static
    batching's."""
    out = []
    users = CONTINUOUS_TARGET_USERS
    cont = _find(cells, workload, "continuous", users)
    seq = _find(cells, workload, "sequential", users)
    static = _find(cells, workload, "static-batch", users)
    gain = paired_gain(cont, seq) if cont and seq else None
    ratio = gain.output_tps if gain else None
    out.append(
        Target(
            f"continuous batching, {users} users on {workload}, output tok/s over sequential",
            f">= {CONTINUOUS_GAIN_TARGET:g}x",
            "not measured"
            if ratio is None
            else f"{ratio.median:.2f}x (rounds {ratio.lo:.2f}-{ratio.hi:.2f}x)",
            None if ratio is None else ratio.median >= CONTINUOUS_GAIN_TARGET,
        )
    )
    c99 = cont.median("ttft_p99_s") if cont else None
    s99 = static.median("ttft_p99_s") if static else None
    out.append(
        Target(
            f"continuous batching, {users} users on {workload}, p99 TTFT below static batching's",
            "< static-batch",
            "not measured" if c99 is None or s99 is None else f"{_fmt_ms(c99)} vs {_fmt_ms(s99)}",
            None if c99 is None or s99 is None else c99 < s99,
        )
    )
    return out


def _cache_targets(cells: Sequence[Cell]) -> list[Target]:
    out = []
    rc = sorted(
        (c for c in cells if c.row.response_cache and not c.row.prefix_cache and c.row.workload == "repeats"),
        key=lambda c: c.concurrency,
    )
    hits = [v for v in (rc[0].rounds.values() if rc else []) for v in v.repeat_end_s]
    dist = distribution(hits)
    out.append(
        Target(
            f"response-cache hit, end to end (send to last byte, {rc[0].concurrency if rc else '-'} user)",
            f"< {RESPONSE_HIT_TARGET_S * 1000:g} ms",
            "not measured"
            if dist is None
            else f"p50 {_fmt_ms(dist['p50'])}, p99 {_fmt_ms(dist['p99'])} ({int(dist['n'])} hits)",
            None if dist is None else dist["p50"] < RESPONSE_HIT_TARGET_S,
        )
    )
    low = min((c.concurrency for c in cells), default=1)
    miss = _find(cells, "shared-prefix", "continuous", low)
    hit = _find(cells, "shared-prefix", "continuous+prefix-cache", low)
    cuts = []
    if miss and hit:
        for k, fig in hit.rounds.items():
            ref = miss.rounds.get(k)
            if ref and ref.ttft_p50_s and fig.ttft_p50_s:
                cuts.append(ref.ttft_p50_s / fig.ttft_p50_s)
    cut = spread(cuts)
    out.append(
        Target(
            f"prefix-cache hit on the shared prompt, TTFT p50 cut against a miss ({low} user)",
            f">= {PREFIX_TTFT_CUT_TARGET:g}x",
            "not measured" if cut is None else f"{cut.median:.2f}x (rounds {cut.lo:.2f}-{cut.hi:.2f}x)",
            None if cut is None else cut.median >= PREFIX_TTFT_CUT_TARGET,
        )
    )
    return out


def _warnings(report: ThroughputReport, cells: Sequence[Cell]) -> list[str]:
    out = []
    points = [p for p in report.points if not p.error]
    busy = [p for p in points if (p.other_cpu_share or 0.0) > BUSY_SHARE]
    cores = report.machine.get("logical_cores") or 1
    loaded = [p for p in points if p.load_avg_start and p.load_avg_start[0] > cores - 0.5]
    if busy:
        worst = max(p.other_cpu_share or 0.0 for p in busy)
        out.append(
            f"{len(busy)} of {len(points)} points ran while other processes used over {BUSY_SHARE:.0%} of the "
            f"CPUs (up to {worst:.0%}): absolute figures are inflated; the paired gains are the robust part"
        )
    if loaded:
        peak = max(p.load_avg_start[0] for p in loaded)
        out.append(
            f"{len(loaded)} of {len(points)} points started with a load average above {cores - 0.5:g} "
            f"on {cores} CPUs (up to {peak:.1f}): the machine was busy"
        )
    for cell in cells:
        failed = sum(f.failed for f in cell.rounds.values())
        if failed:
            out.append(f"{cell.row.name} at {cell.concurrency} users: {failed} requests failed")
        for error in cell.errors:
            out.append(f"{cell.row.name} at {cell.concurrency} users: not measured ({error})")
    for life in report.servers:
        if life.error:
            out.append(f"{life.row} round {life.round}: the server did not start ({life.error})")
    if not report.complete:
        out.append("the run did not finish: this report holds the points measured before it stopped")
    return out
