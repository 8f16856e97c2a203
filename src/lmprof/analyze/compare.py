"""Comparing runs: the headline figures of each group, the change against the baseline,
and whether that change is beyond the run-to-run noise.

Pure: `list[RunGroup] -> Comparison`, no I/O. Every renderer (terminal, markdown, HTML,
JSON) and the `--fail-on` thresholds read the same Comparison.

The noise rule. Each group's figure is the median of its samples; its spread is the
half-range, (max - min) / 2. Samples come from repeat runs (a group of several runs), or,
for generation figures of a single run, from its generation calls of the same shape
("in-process repeats": same call, batch size and prompt length). A change is beyond
noise when |median_B - median_A| > spread_A + spread_B, that is when the two ranges,
centred on their medians, do not overlap. A group with one sample borrows the other
group's spread (the same configuration is assumed to be as noisy on both sides). When
neither group has more than one sample the noise is unknown and so is the verdict.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lmprof.record.groups import RunGroup
from lmprof.record.run import STATUS_COMPLETE, Generation, Run

LOWER = "lower"
HIGHER = "higher"

SECONDS = "s"
BYTES = "bytes"
TOKENS_PER_S = "tokens/s"

SOURCE_REPEAT_RUNS = "repeat runs"
SOURCE_IN_PROCESS = "in-process repeats"
SOURCE_SINGLE = "single run"

LOAD_PHASES = ("resolve", "load_model", "read_weights", "to_device", "load_tokenizer", "pipeline_setup")
MEMORY_KIND_PATTERN = re.compile(r"^memory_([a-z0-9_]+)_bytes$")


@dataclass(frozen=True)
class FigureSpec:
    """What a figure is: its name (as --fail-on spells it), unit, and which way is better."""

    name: str
    label: str
    unit: str  # SECONDS, BYTES or TOKENS_PER_S
    better: str  # LOWER or HIGHER
    section: str  # "load", "generation", "memory", "run"
    per_generation: bool = False  # in-process repeats can give its noise


def _generation_specs() -> list[FigureSpec]:
    def gen(name: str, label: str, unit: str = SECONDS, better: str = LOWER) -> FigureSpec:
        return FigureSpec(name, label, unit, better, "generation", per_generation=True)

    return [
        gen("ttft_s", "time to first token"),
        gen("tpot_s", "time per output token"),
        gen("itl_p50_s", "inter-token latency p50"),
        gen("itl_p90_s", "inter-token latency p90"),
        gen("itl_p99_s", "inter-token latency p99"),
        gen("prefill_tokens_per_s", "prefill throughput", TOKENS_PER_S, HIGHER),
        gen("decode_tokens_per_s", "decode throughput", TOKENS_PER_S, HIGHER),
    ]


FIGURES: tuple[FigureSpec, ...] = (
    *(FigureSpec(f"{p}_s", f"{p} wall", SECONDS, LOWER, "load") for p in LOAD_PHASES),
    *_generation_specs(),
    FigureSpec("peak_rss_bytes", "peak host RSS", BYTES, LOWER, "memory"),
    FigureSpec("peak_device_allocated_bytes", "peak device allocated", BYTES, LOWER, "memory"),
    FigureSpec("peak_device_reserved_bytes", "peak device reserved", BYTES, LOWER, "memory"),
    FigureSpec("wall_s", "run wall time", SECONDS, LOWER, "run"),
)
FIGURES_BY_NAME = {spec.name: spec for spec in FIGURES}


def memory_kind_spec(part: str) -> FigureSpec:
    """The figure for one part of `deep.memory_by_kind` (weights, kv_cache, host_kv_cache, ...)."""
    return FigureSpec(f"memory_{part}_bytes", f"memory: {part.replace('_', ' ')}", BYTES, LOWER, "memory")


def figure_spec(name: str) -> FigureSpec | None:
    """The spec of a figure name, including memory-by-kind names; None when unknown."""
    if name in FIGURES_BY_NAME:
        return FIGURES_BY_NAME[name]
    match = MEMORY_KIND_PATTERN.match(name)
    return memory_kind_spec(match.group(1)) if match else None


# --- figures of one run -------------------------------------------------------------


_GENERATION_VALUES: dict[str, Callable[[Generation], float | None]] = {
    "ttft_s": lambda g: g.ttft_s,
    "tpot_s": lambda g: g.tpot_s,
    "itl_p50_s": lambda g: g.itl_percentiles_s.get("p50"),
    "itl_p90_s": lambda g: g.itl_percentiles_s.get("p90"),
    "itl_p99_s": lambda g: g.itl_percentiles_s.get("p99"),
    "prefill_tokens_per_s": lambda g: g.prefill_tokens_per_s,
    "decode_tokens_per_s": lambda g: g.decode_tokens_per_s,
}


def repeat_generations(run: Run) -> list[Generation]:
    """The run's generation calls shaped like its primary one (same call, batch, prompt
    length), untraced ones preferred: these can stand as in-process repeats."""
    primary = run.generation
    if primary is None:
        return []
    shape = (primary.call, primary.batch_size, primary.prompt_tokens)
    same = [g for g in run.generations if (g.call, g.batch_size, g.prompt_tokens) == shape] or [primary]
    # A call traced by torch.profiler (--deep) is slowed by the tracer: leave it out
    # whenever an untraced call of the same shape exists.
    untraced = [g for g in same if not _traced(g)]
    return untraced or same


def _traced(gen: Generation) -> bool:
    return bool(getattr(gen, "traced", False))


def generation_samples(run: Run) -> dict[str, list[float]]:
    """Per-generation values of each generation figure over the run's in-process repeats."""
    gens = repeat_generations(run)
    samples: dict[str, list[float]] = {}
    for name, value_of in _GENERATION_VALUES.items():
        values = [v for v in (value_of(g) for g in gens) if v is not None]
        if values:
            samples[name] = [float(v) for v in values]
    return samples


def run_figures(run: Run) -> dict[str, float]:
    """Headline figures of one run, by figure name; figures the run lacks are absent.
    A generation figure is the median over the run's in-process repeats."""
    figures: dict[str, float] = {}
    for phase_name in LOAD_PHASES:
        walls = [p.wall_s for p in run.phases if p.name == phase_name]
        if walls:
            figures[f"{phase_name}_s"] = float(sum(walls))
    for name, values in generation_samples(run).items():
        figures[name] = float(statistics.median(values))
    mem = run.memory
    if mem is not None:
        if mem.peak_rss_bytes:
            figures["peak_rss_bytes"] = float(mem.peak_rss_bytes)
        if mem.peak_device_allocated_bytes is not None:
            figures["peak_device_allocated_bytes"] = float(mem.peak_device_allocated_bytes)
        if mem.peak_device_reserved_bytes is not None:
            figures["peak_device_reserved_bytes"] = float(mem.peak_device_reserved_bytes)
    for part, value in memory_parts(run).items():
        figures[memory_kind_spec(part).name] = value
    if run.wall_s:
        figures["wall_s"] = float(run.wall_s)
    return figures


def memory_parts(run: Run) -> dict[str, float]:
    """`deep.memory_by_kind` as {part: bytes}: its `parts` (weights, kv_cache, ...), and the
    `parts` of its `host` and `device` splits as host_<part> and device_<part>. Part names
    lose a `_bytes` suffix, so every figure is memory_<part>_bytes."""
    by_kind = run.deep.memory_by_kind if run.deep is not None else None
    if not isinstance(by_kind, dict):
        return {}
    out = _parts_of(by_kind, "")
    for where in ("host", "device"):
        if isinstance(by_kind.get(where), dict):
            out.update(_parts_of(by_kind[where], f"{where}_"))
    return out


def _parts_of(split: dict, prefix: str) -> dict[str, float]:
    parts = split.get("parts")
    if not isinstance(parts, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in parts.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            part = prefix + str(key).removesuffix("_bytes")
            if re.fullmatch(r"[a-z0-9_]+", part):
                out[part] = float(value)
    return out


# --- one figure of one group --------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """A figure over a group's samples: the median, the range, and where the samples came from."""

    center: float
    low: float
    high: float
    samples: int
    source: str  # SOURCE_REPEAT_RUNS, SOURCE_IN_PROCESS or SOURCE_SINGLE

    @property
    def spread(self) -> float | None:
        """Half the range; None with one sample (unknown, not zero)."""
        return (self.high - self.low) / 2 if self.samples > 1 else None

    @classmethod
    def of(cls, values: Sequence[float], source: str) -> Measure:
        return cls(float(statistics.median(values)), min(values), max(values), len(values), source)


def group_measure(group: RunGroup, spec: FigureSpec) -> Measure | None:
    if len(group.runs) > 1:
        values = [f[spec.name] for f in (run_figures(r) for r in group.runs) if spec.name in f]
        if len(values) > 1:
            return Measure.of(values, SOURCE_REPEAT_RUNS)
        return Measure.of(values, SOURCE_SINGLE) if values else None
    run = group.runs[0]
    if spec.per_generation:
        values = generation_samples(run).get(spec.name, [])
        if values:
            return Measure.of(values, SOURCE_IN_PROCESS if len(values) > 1 else SOURCE_SINGLE)
        return None
    value = run_figures(run).get(spec.name)
    return Measure.of([value], SOURCE_SINGLE) if value is not None else None


# --- the change against the baseline ------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One group's figure against the baseline's."""

    delta: float  # in the figure's unit, this group minus the baseline
    relative: float | None  # delta / |baseline|; None when the baseline is 0
    verdict: str  # "better", "worse" or "same"
    noise: float | None  # combined spread in the figure's unit; None when unknown
    noise_relative: float | None  # noise / |baseline|
    beyond_noise: bool | None  # None when the noise is unknown


def change_between(base: Measure, other: Measure, better: str) -> Change:
    delta = other.center - base.center
    relative = delta / abs(base.center) if base.center != 0 else None
    if delta == 0:
        verdict = "same"
    else:
        verdict = "better" if (delta < 0) == (better == LOWER) else "worse"
    spreads = [base.spread, other.spread]
    if spreads[0] is None and spreads[1] is None:
        noise = None
    else:
        known = next(s for s in spreads if s is not None)
        noise = sum(s if s is not None else known for s in spreads)
    noise_relative = noise / abs(base.center) if noise is not None and base.center != 0 else None
    beyond = None if noise is None else abs(delta) > noise
    return Change(delta, relative, verdict, noise, noise_relative, beyond)


# --- the comparison -----------------------------------------------------------------


@dataclass(frozen=True)
class FigureRow:
    spec: FigureSpec
    measures: list[Measure | None]  # one per group, baseline first
    changes: list[Change | None]  # one per group after the baseline; None where a side lacks it


@dataclass(frozen=True)
class GroupSummary:
    label: str  # "A", "B", ...
    source: str
    run_ids: list[str]
    model_id: str | None
    device: str | None
    dtype: str | None
    runs: int
    in_process_repeats: int  # matching generation calls in a single-run group (0 if none)
    statuses: list[str]
    traced_generations: bool = False  # its generation figures come only from traced calls

    @property
    def description(self) -> str:
        if self.runs > 1:
            return f"{self.runs} repeat runs"
        if self.in_process_repeats > 1:
            return f"1 run, {self.in_process_repeats} in-process repeats"
        return "1 run"


@dataclass(frozen=True)
class Comparison:
    groups: list[GroupSummary]  # baseline first
    rows: list[FigureRow]
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> FigureRow | None:
        return next((r for r in self.rows if r.spec.name == name), None)

    @property
    def noise_known(self) -> bool:
        """True when at least one change in the table has a known noise."""
        return any(c is not None and c.noise is not None for r in self.rows for c in r.changes)


def compare(groups: Sequence[RunGroup]) -> Comparison:
    """Compare every group with the first (the baseline), figure by figure."""
    if len(groups) < 2:
        raise ValueError("compare needs at least two run groups")
    specs = list(FIGURES)
    seen = set(FIGURES_BY_NAME)
    for group in groups:
        for run in group.runs:
            for part in memory_parts(run):
                spec = memory_kind_spec(part)
                if spec.name not in seen:
                    seen.add(spec.name)
                    specs.insert(_after_memory(specs), spec)
    rows: list[FigureRow] = []
    for spec in specs:
        measures = [group_measure(g, spec) for g in groups]
        if all(m is None for m in measures):
            continue
        base = measures[0]
        changes = [
            change_between(base, m, spec.better) if base is not None and m is not None else None
            for m in measures[1:]
        ]
        rows.append(FigureRow(spec, measures, changes))
    summaries = [_summary(chr(ord("A") + i) if i < 26 else f"G{i}", g) for i, g in enumerate(groups)]
    notes = _notes(summaries, rows)
    for summary, group in zip(summaries, groups):
        models = sorted({str((r.model or {}).get("id")) for r in group.runs})
        if len(models) > 1:
            notes.append(f"{summary.label}: its repeat runs are of different models ({', '.join(models)})")
    return Comparison(summaries, rows, notes)


def _after_memory(specs: list[FigureSpec]) -> int:
    last = max(i for i, s in enumerate(specs) if s.section == "memory")
    return last + 1


def _summary(label: str, group: RunGroup) -> GroupSummary:
    first = group.runs[0]
    model = first.model or {}
    repeats = len(repeat_generations(first)) if len(group.runs) == 1 else 0
    return GroupSummary(
        label=label,
        source=group.source,
        run_ids=[r.run_id for r in group.runs],
        model_id=model.get("id"),
        device=model.get("device"),
        dtype=model.get("dtype"),
        runs=len(group.runs),
        in_process_repeats=repeats,
        statuses=[r.status for r in group.runs],
        traced_generations=any(any(_traced(g) for g in repeat_generations(r)) for r in group.runs),
    )


def _notes(groups: list[GroupSummary], rows: list[FigureRow]) -> list[str]:
    notes: list[str] = []
    unknown = [r for r in rows if any(c is not None and c.noise is None for c in r.changes)]
    advice = "pass a folder of repeat runs (one run folder each) to measure the spread"
    if unknown and len(unknown) == sum(1 for r in rows if any(c is not None for c in r.changes)):
        notes.append(
            f"noise unknown: one run per configuration, so no change can be told from run-to-run noise; {advice}"
        )
    elif unknown:
        sections = ", ".join(dict.fromkeys(r.spec.section for r in unknown))
        notes.append(f"noise unknown for the {sections} figures: one run per configuration; {advice}")
    if any(g.in_process_repeats > 1 for g in groups):
        notes.append(
            "in-process repeats: generation calls of one process; they miss load-to-load variation, "
            "so their spread understates run-to-run noise"
        )
    for g in groups:
        if g.traced_generations:
            notes.append(
                f"{g.label}: generation figures come from a call traced by torch.profiler (--deep), "
                "slowed by the tracer"
            )
        bad = [s for s in g.statuses if s != STATUS_COMPLETE]
        if bad:
            notes.append(
                f"{g.label}: {len(bad)} of {g.runs} runs did not complete ({', '.join(sorted(set(bad)))})"
            )
    base = groups[0]
    for g in groups[1:]:
        differs = [
            what
            for what, a, b in (
                ("model", base.model_id, g.model_id),
                ("device", base.device, g.device),
                ("dtype", base.dtype, g.dtype),
            )
            if a != b
        ]
        if differs:
            notes.append(f"{g.label} differs from {base.label} in {', '.join(differs)}")
    return notes
