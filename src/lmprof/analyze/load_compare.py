"""Load runs side by side: the figures of each level against the baseline's, and the
`--fail-on` thresholds on them. Pure: LoadRuns -> LoadComparison -> checks."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lmprof.analyze.load import LevelSummary, summarize
from lmprof.analyze.thresholds import Threshold
from lmprof.errors import UsageError
from lmprof.record.load import LoadRun

# --- two load runs side by side ---------------------------------------------------------------

LOWER, HIGHER = "lower", "higher"


@dataclass(frozen=True)
class LoadFigure:
    name: str  # as --fail-on spells it
    label: str
    unit: str  # "s", "tok/s", "req/s", "share"
    better: str


def _latency_figures() -> list[LoadFigure]:
    out = []
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "p50", "p90", "p95", "p99"):
            out.append(LoadFigure(f"{metric}_{stat}", f"{metric.upper()} {stat}", "s", LOWER))
    return out


LOAD_FIGURES: tuple[LoadFigure, ...] = (
    LoadFigure("output_tps", "output tokens/s", "tok/s", HIGHER),
    LoadFigure("total_tps", "total tokens/s", "tok/s", HIGHER),
    LoadFigure("request_rps", "requests/s", "req/s", HIGHER),
    *_latency_figures(),
    LoadFigure("ttft_sched_p99", "TTFT p99 from scheduled", "s", LOWER),
    LoadFigure("e2el_sched_p99", "E2EL p99 from scheduled", "s", LOWER),
    LoadFigure("goodput_share", "goodput share", "share", HIGHER),
    LoadFigure("goodput_rps", "goodput req/s", "req/s", HIGHER),
    LoadFigure("error_share", "error share", "share", LOWER),
)
LOAD_FIGURES_BY_NAME = {f.name: f for f in LOAD_FIGURES}


def level_figures(s: LevelSummary) -> dict[str, float]:
    out = {"output_tps": s.output_tps, "total_tps": s.total_tps, "request_rps": s.request_rps}
    for metric, dist in s.latency_s.items():
        for stat in ("mean", "p50", "p90", "p95", "p99"):
            if dist is not None:
                out[f"{metric}_{stat}"] = dist[stat]
    for metric in ("ttft", "e2el"):
        if s.scheduled_latency_s.get(metric):
            out[f"{metric}_sched_p99"] = s.scheduled_latency_s[metric]["p99"]
    if s.goodput is not None:
        out["goodput_share"], out["goodput_rps"] = s.goodput["share"], s.goodput["rps"]
    if s.sent:
        out["error_share"] = sum(e["count"] for e in s.errors.values()) / s.sent
    return out


@dataclass
class FigureChange:
    level: str
    figure: LoadFigure
    base: float | None
    other: float | None

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.other is None else self.other - self.base

    @property
    def relative(self) -> float | None:
        if self.delta is None or not self.base:
            return None
        return self.delta / abs(self.base)


@dataclass
class LoadComparison:
    labels: list[str]  # baseline first
    changes: list[list[FigureChange]]  # one list per run after the baseline
    notes: list[str] = field(default_factory=list)


def _level_key(s: LevelSummary) -> str:
    return s.title


def compare_load_runs(runs: Sequence[LoadRun], labels: Sequence[str]) -> LoadComparison:
    """Each run after the first against the first, level by level. Levels pair by their
    title (same concurrency or rate); when none match, by position (a --sweep picks its rates
    from each run's own probe, so their rates differ)."""
    summaries = [summarize(r) for r in runs]
    base = summaries[0]
    comparison = LoadComparison(labels=list(labels), changes=[])
    for label, other in zip(labels[1:], summaries[1:]):
        by_title = {_level_key(s): s for s in other.levels}
        pairs = [(b, by_title[_level_key(b)]) for b in base.levels if _level_key(b) in by_title]
        if not pairs:
            pairs = list(zip(base.levels, other.levels))
            if pairs:
                comparison.notes.append(f"{label}: no level matches the baseline's; paired by position")
        changes = []
        for b, o in pairs:
            fb, fo = level_figures(b), level_figures(o)
            level = b.title if b.title == o.title else f"{b.title} | {o.title}"
            for fig in LOAD_FIGURES:
                if fig.name in fb or fig.name in fo:
                    changes.append(FigureChange(level, fig, fb.get(fig.name), fo.get(fig.name)))
        comparison.changes.append(changes)
    return comparison


# --- --fail-on for load runs ------------------------------------------------------------------

_THRESHOLD = re.compile(
    r"^(?P<figure>[a-z_0-9]+)\s*(?P<op>[<>=])\s*(?P<sign>[+-])?\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*"
    r"(?P<unit>%|ms|s|us|µs|tok/s|req/s)?$"
)
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_load_thresholds(expressions: Iterable[str]) -> list[Threshold]:
    """`output_tps=-5%,ttft_p99=+20%` (or `>`/`<` as in profile compare: `ttft_p99>+20%`).
    With `=`, the sign says the direction: + breaches on a rise beyond it, - on a fall."""
    out = []
    for expression in expressions:
        for part in expression.split(","):
            if part.strip():
                out.append(_parse_load_threshold(part.strip()))
    return out


def _parse_load_threshold(expr: str) -> Threshold:
    match = _THRESHOLD.match(expr)
    example = "e.g. 'output_tps=-5%', 'ttft_p99=+20%', 'e2el_p50>+100ms'"
    if match is None:
        raise UsageError(f"--fail-on '{expr}': expected FIGURE=±AMOUNT (or > / <); {example}")
    name, op, sign, number, unit = match.group("figure", "op", "sign", "number", "unit")
    figure = LOAD_FIGURES_BY_NAME.get(name)
    if figure is None:
        close = difflib.get_close_matches(name, list(LOAD_FIGURES_BY_NAME), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"--fail-on '{expr}': unknown load figure '{name}'{hint}; figures: "
            + ", ".join(LOAD_FIGURES_BY_NAME)
        )
    if sign is None:
        raise UsageError(
            f"--fail-on '{expr}': give the amount a sign (+ for a rise, - for a fall); {example}"
        )
    if op == "=":
        op = ">" if sign == "+" else "<"
    amount = float(number) * (-1 if sign == "-" else 1)
    if unit == "%":
        return Threshold(expr, name, op, amount / 100, relative=True)
    if unit in _SECONDS:
        if figure.unit != "s":
            raise UsageError(f"--fail-on '{expr}': {name} is in {figure.unit}, not seconds")
        amount *= _SECONDS[unit]
    elif unit is not None and unit != figure.unit:
        raise UsageError(f"--fail-on '{expr}': {name} is in {figure.unit}, not {unit}")
    return Threshold(expr, name, op, amount, relative=False)


@dataclass(frozen=True)
class LoadCheck:
    threshold: Threshold
    run: str
    level: str
    value: float | None  # the change compared (a fraction when relative)
    breached: bool


def check_load_thresholds(comparison: LoadComparison, thresholds: Iterable[Threshold]) -> list[LoadCheck]:
    checks = []
    for threshold in thresholds:
        for label, changes in zip(comparison.labels[1:], comparison.changes):
            for change in changes:
                if change.figure.name != threshold.figure:
                    continue
                value = change.relative if threshold.relative else change.delta
                breached = value is not None and threshold.breached_by(value)
                checks.append(LoadCheck(threshold, label, change.level, value, breached))
    return checks
