"""Ablation figures from saved Runs: speed-ups, the share of the bandwidth floor, token agreement.

Pure: Runs (or figures read from them) in, numbers out. Speed-ups are paired: each round
ran every row once, so a ratio is taken within a round (both rows saw the same machine
load) and the median over rounds is reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from lmprof.record.ablation import RoundFigures, RowFigures, RowResult
from lmprof.record.run import Run

TOKENS_DETAIL = "new_token_ids"  # where an ablation row notes its first sequence's new tokens
AGREEMENT_DETAIL = "teacher_forced_agreement"  # noted on a row's agreement_check phase
# Other processes taking more than this share of all CPUs during a row's run slowed it
# (lmprof.collect.environment warns at the same share).
BUSY_SHARE = 0.25


def round_figures(run: Run) -> RoundFigures:
    """The headline generation of a Run, the memory peak of its measured generate call, and what
    its phases noted: the new tokens (generate) and the teacher-forced agreement (agreement_check)."""
    gen = run.generation
    tokens: list[int] = []
    forced: float | None = None
    peak: int | None = None
    file_backed: int | None = None
    for phase in reversed(run.phases):
        if phase.name == "generate" and TOKENS_DETAIL in phase.detail and not tokens:
            tokens = list(phase.detail[TOKENS_DETAIL])
            # During the call, not the process's high-water mark: loading (a dtype conversion,
            # quantizing) briefly holds two copies of the weights, which is not what a switch costs
            # while generating.
            peak = phase.device_peak_allocated_bytes or phase.rss_peak_bytes
            file_backed = phase.file_rss_end_bytes
        if phase.name == "agreement_check" and forced is None:
            forced = phase.detail.get(AGREEMENT_DETAIL)
    if peak is None and run.memory is not None:
        peak = run.memory.peak_device_allocated_bytes or run.memory.peak_rss_bytes or None
    return RoundFigures(
        ttft_s=gen.ttft_s if gen else None,
        decode_tokens_per_s=gen.decode_tokens_per_s if gen else None,
        step_s=gen.tpot_s if gen else None,
        peak_memory_bytes=peak,
        new_token_ids=tokens,
        forced_agreement=forced,
        other_cpu_share=(run.environment or {}).get("other_processes_cpu_share"),
        file_backed_bytes=file_backed,
    )


def median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def paired_speedup(faster: Sequence[float | None], slower: Sequence[float | None]) -> float | None:
    """Median over rounds of faster[i] / slower[i] (rates: higher is better); rounds where
    either is missing are left out."""
    ratios = [a / b for a, b in zip(faster, slower) if a is not None and b]
    return statistics.median(ratios) if ratios else None


def floor_step_s(weight_bytes: int | None, read_bytes_per_s: float | None) -> float | None:
    """The fastest a batch-1 decode step can be: every weight byte read once at the best bandwidth."""
    if not weight_bytes or not read_bytes_per_s:
        return None
    return weight_bytes / read_bytes_per_s


def floor_share(floor_s: float | None, step_s: float | None) -> float | None:
    """How close a measured step came to the floor: 1.0 means it read weights at the best
    measured bandwidth; 0.25 means it took four times the floor."""
    if floor_s is None or not step_s:
        return None
    return floor_s / step_s


def token_agreement(tokens: Sequence[int], reference: Sequence[int]) -> float | None:
    """Share of positions where two greedy sequences hold the same token, over the longer one."""
    n = max(len(tokens), len(reference))
    if n == 0:
        return None
    return sum(a == b for a, b in zip(tokens, reference)) / n


def common_prefix_tokens(tokens: Sequence[int], reference: Sequence[int]) -> int:
    """Tokens equal before the first difference: after it the two runs condition on different text."""
    count = 0
    for a, b in zip(tokens, reference):
        if a != b:
            break
        count += 1
    return count


def _rates(row: RowResult) -> list[float | None]:
    return [r.decode_tokens_per_s if r is not None else None for r in row.rounds]


def _first_tokens(row: RowResult) -> list[int]:
    return next((r.new_token_ids for r in row.rounds if r is not None and r.new_token_ids), [])


def summarize_rows(
    rows: Sequence[RowResult],
    baseline: str,
    reference: str,
    read_bytes_per_s: float | None,
) -> list[RowFigures]:
    """Table figures for every row, in order. `baseline` names the row speed-ups are against,
    `reference` the row whose greedy tokens the others are compared with."""
    by_name = {row.name: row for row in rows}
    base = by_name.get(baseline)
    ref_tokens = _first_tokens(by_name[reference]) if reference in by_name else []
    figures: list[RowFigures] = []
    previous: RowResult | None = None
    for row in rows:
        ran = [r for r in row.rounds if r is not None]
        fig = RowFigures(row.name, row.label, row.status, row.reason, len(ran), batch=row.batch)
        figures.append(fig)
        if not ran:
            continue
        fig.ttft_s = median_or_none([r.ttft_s for r in ran])
        fig.decode_tokens_per_s = median_or_none([r.decode_tokens_per_s for r in ran])
        fig.step_s = median_or_none([r.step_s for r in ran])
        fig.peak_memory_bytes = max((r.peak_memory_bytes for r in ran if r.peak_memory_bytes), default=None)
        fig.file_backed_bytes = max((r.file_backed_bytes for r in ran if r.file_backed_bytes), default=None)
        if base is row:
            fig.speedup_vs_baseline = 1.0
        elif base is not None:
            fig.speedup_vs_baseline = paired_speedup(_rates(row), _rates(base))
        if previous is not None:
            fig.speedup_vs_previous = paired_speedup(_rates(row), _rates(previous))
        fig.floor_s = floor_step_s(row.decode_weight_bytes, read_bytes_per_s)
        fig.floor_share = floor_share(fig.floor_s, fig.step_s)
        fig.forced_agreement = median_or_none([r.forced_agreement for r in ran])
        fig.busy_rounds = [
            k
            for k, r in enumerate(row.rounds, 1)
            if r is not None and (r.other_cpu_share or 0.0) > BUSY_SHARE
        ]
        tokens = _first_tokens(row)
        if ref_tokens and tokens:
            fig.agreement = token_agreement(tokens, ref_tokens)
            fig.agreement_prefix_tokens = common_prefix_tokens(tokens, ref_tokens)
        previous = row
    return figures


def faster_alone(
    rows: Sequence[RowResult], best: str, combines: Sequence[str], min_ratio: float
) -> tuple[str, float] | None:
    """The switch of the best combination whose own row outran the combination over the rounds
    both ran, and the median of its per-round ratios to it (at least min_ratio), or None. The
    combination is chosen in round 1 from one-switch speed-ups; on a noisy host a switch added
    to a winner can buy nothing, and the later rounds then show the winner alone ahead."""
    by_name = {row.name: row for row in rows}
    combined = by_name.get(best)
    if combined is None or combined.status != "ran" or len(combines) < 2:
        return None
    ratios = [
        (ratio, name)
        for name in combines
        if name in by_name and by_name[name].status == "ran"
        for ratio in [paired_speedup(_rates(by_name[name]), _rates(combined))]
        if ratio is not None and ratio >= min_ratio
    ]
    if not ratios:
        return None
    ratio, name = max(ratios)
    return name, ratio
