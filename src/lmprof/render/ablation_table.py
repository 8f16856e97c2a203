"""The `lmprof ablate` table: one row per configuration, each beside the baseline, the row
before it, the bandwidth floor and the fp32 engine's greedy tokens.

Takes an AblationReport (what OUT/ablation.json holds, `lmprof.record.ablation`); measures nothing.
"""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lmprof.analyze.ablation import faster_alone
from lmprof.record.ablation import BASELINE, BEST, MIN_GAIN, REFERENCE, AblationReport
from lmprof.render.units import fmt_bytes, fmt_number, fmt_s, fmt_share, fmt_times


def ablation_table(report: AblationReport) -> Table:
    table = Table(
        title=f"Ablation: {report.model}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
    )
    table.add_column("configuration", no_wrap=True)
    for name in ("TTFT", "tok/s", "peak", "×base", "×prev", "floor", "agree"):
        table.add_column(name, justify="right", no_wrap=True)
    for fig in report.figures:
        label = Text(fig.label, style="bold" if fig.name in (BASELINE, REFERENCE) else "")
        if fig.status != "ran" or fig.rounds_run == 0:
            table.add_row(label, Text(fig.status, style="yellow" if fig.status == "skipped" else "red"))
            continue
        table.add_row(
            label,
            fmt_s(fig.ttft_s),
            fmt_number(fig.decode_tokens_per_s, whole_from=100),
            fmt_bytes(fig.peak_memory_bytes),
            fmt_times(fig.speedup_vs_baseline),
            fmt_times(fig.speedup_vs_previous),
            fmt_share(fig.floor_share),
            fmt_share(fig.forced_agreement if fig.forced_agreement is not None else fig.agreement),
        )
    return table


def not_measured(report: AblationReport) -> list[str]:
    """One line per row that was skipped or failed, with the reason."""
    return [f"{fig.label}: {fig.status}, {fig.reason}" for fig in report.figures if fig.status != "ran"]


def _outrun_note(report: AblationReport) -> str:
    outrun = faster_alone(report.rows, BEST, report.best_combines, MIN_GAIN)
    if outrun is None:
        return ""
    name, ratio = outrun
    others = " + ".join(n for n in report.best_combines if n != name)
    return (
        f" Over the rounds, the {name} row alone ran {ratio:.2f}× the best combination (median of per-round "
        f"ratios): adding {others} bought nothing measurable on this host."
    )


FEW_ROUNDS = 3  # below this, a row's median is one or two rounds, and hosts move that much


def _notes(report: AblationReport) -> list[str]:
    req = report.request
    rounds = req.get("rounds")
    notes = [
        f"{req.get('prompt_tokens')}-token prompt ({report.prompt_source}), {req.get('max_new_tokens')} new tokens, "
        f"{report.threads} threads, {rounds} interleaved round{'s' if rounds != 1 else ''}; each row-round a fresh "
        f"process warmed up with {req.get('warmup_tokens')} tokens. Figures are medians over rounds.",
        "engine fp32: the engine's defaults (static KV cache, SDPA attention, grouped GQA, unfused fp32 "
        "weights); each row below it changes one switch; best combination: of the switches that beat it "
        f"by {MIN_GAIN - 1:.0%} in round 1, the set that combines and whose speed-ups multiply to the most "
        f"({' + '.join(report.best_combines) or 'none'})."
        + (f" {report.best_note}." if report.best_note else "")
        + _outrun_note(report),
        "tok/s: decode tokens per second (batch rows count every sequence). ×base / ×prev: decode tok/s "
        "against the transformers row / the row above, the median of ratios taken within each round. "
        "peak: resident memory at its highest during the measured generate call (device memory on a GPU), "
        "file-backed pages of the memory-mapped checkpoint included: where int8, fused or column-major copies "
        "replaced the fp32 weights, those pages can stay mapped though unused (clean: the kernel may drop "
        "them); ablation.json has the file-backed part.",
    ]
    if isinstance(rounds, int) and rounds < FEW_ROUNDS:
        notes.append(
            f"Only {rounds} round{'s' if rounds != 1 else ''}: on shared 2-core hosts one round of a row has "
            "differed from the next by 15% to 2× (benchmarks/RESULTS.md), so read these ratios as rough; "
            f"compare rows with --rounds {FEW_ROUNDS} or more."
        )
    if report.read_bandwidth_gbps:
        reference = next((f for f in report.figures if f.name == REFERENCE and f.floor_s), None)
        floor = f" (fp32 floor {fmt_s(reference.floor_s)} per step)" if reference else ""
        notes.append(
            f"floor: the decode step's floor (weight bytes it reads / the best read bandwidth measured, "
            f"{report.read_bandwidth_gbps:.1f} GB/s at {report.probes.get('threads')} threads{floor}) over the "
            f"measured step time. Probes: {report.probes.get('cache_file')}."
        )
    else:
        notes.append("floor: no read bandwidth was measured, so no floor.")
    notes.append(
        "agree: fed the fp32 engine's greedy tokens, how often this row's argmax picks the same next token "
        "(teacher-forced, first sequence); where no reference was available yet, the share of equal "
        "positions in the two free-running outputs. ablation.json has both, and the common prefix."
    )
    cores = (report.system.get("cpu") or {}).get("logical_cores") or 1
    load = report.load_avg_start[0] if report.load_avg_start else 0.0
    busy = (
        " — the machine was busy: timings are noisy"
        if max(load, report.load_avg_end[0]) > cores - 0.5
        else ""
    )
    notes.append(
        f"Load average {load:.2f} at start, {report.load_avg_end[0]:.2f} at end on {cores} CPUs{busy}."
    )
    out = req.get("out")
    notes.append(f"Runs: {out}/<row>/run.json (median round; `lmprof show` it), {out}/<row>/round-<k>/; "
                 f"report {out}/ablation.json.")  # fmt: skip
    return notes


def render_ablation(report: AblationReport) -> RenderableType:
    parts: list[RenderableType] = [ablation_table(report)]
    skipped = not_measured(report)
    if skipped:
        parts.append(Text("Not measured:\n" + "\n".join(f"  {line}" for line in skipped), style="yellow"))
    busy = [
        f"{fig.name} (round {', '.join(map(str, fig.busy_rounds))})"
        for fig in report.figures
        if fig.busy_rounds
    ]
    if busy:
        parts.append(
            Text(
                f"Busy rounds (other processes took over a quarter of the CPUs): {'; '.join(busy)}.",
                style="yellow",
            )
        )
    parts.extend(Text(note, style="dim") for note in _notes(report))
    return Group(*parts)
