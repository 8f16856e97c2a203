"""The terminal summary of a Run: phases, generation, memory, system, files.

Takes a Run, returns a rich renderable; printing is the caller's business, so the
same summary is shown after a profile, by `lmprof show`, and in golden tests.
"""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lmprof.analyze.phases import (
    UNATTRIBUTED,
    is_filler,
    phase_gaps,
    phase_rows,
    repeated_work,
    weight_paging,
)
from lmprof.record.run import STATUS_COMPLETE, Run
from lmprof.render.deep_view import render_deep
from lmprof.render.generation_facts import generation_facts
from lmprof.render.system_view import system_line
from lmprof.render.units import fmt_bytes, fmt_count, fmt_pct, fmt_s

TEXT_PREVIEW_CHARS = 300


def render_run(run: Run, run_dir: Path | None = None) -> RenderableType:
    parts: list[RenderableType] = [_header(run)]
    gaps = gaps_text(run)
    if gaps.plain:
        parts.append(gaps)
    parts.append(phase_table(run))
    if run.generation is not None:
        parts.append(generation_table(run))
    parts.append(memory_text(run))
    if run.deep is not None:
        parts.append(render_deep(run))
    if run.generation is not None and run.generation.text:
        parts.append(_generated_text(run))
    if run.system:
        parts.append(Text(f"System: {system_line(run.system)}", style="dim"))
    for warning in run.warnings:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    if run_dir is not None:
        parts.append(Text(f"Run saved to {run_dir}/run.json  (re-render: lmprof show {run_dir})"))
        if (Path(run_dir) / "report.html").exists():
            parts.append(Text(f"Report: {run_dir}/report.html  (open it in a browser)"))
        if run.deep is not None and run.deep.flames:
            names = ", ".join(f"flame-{f.name}.svg" for f in run.deep.flames)
            parts.append(
                Text(f"Flame graphs: {names} (+ .speedscope.json, .folded); timeline: trace.json (Perfetto)")
            )
    return Group(*parts)


def _header(run: Run) -> Text:
    text = Text()
    text.append("lmprof ", style="bold")
    m = run.model
    if m:
        text.append(f"{m.get('id')}", style="bold cyan")
        bits = [
            m.get("architecture"),
            f"{fmt_count(m.get('parameter_count'))} params",
            m.get("dtype"),
            m.get("device"),
        ]
        text.append("  " + " · ".join(str(b) for b in bits if b))
    text.append(f"  wall {fmt_s(run.wall_s)}")
    if run.status != STATUS_COMPLETE:
        text.append(f"\n[{run.status.upper()}]", style="bold red")
        if run.error:
            text.append(f" {run.error.get('type')}: {run.error.get('message')}", style="red")
    return text


def gaps_text(run: Run) -> Text:
    """The summary's first lines: the largest time no phase names, and loading work repeated."""
    text = Text()
    gaps = run.phase_gaps or phase_gaps(run)  # a version-1 Run has no saved gaps
    if gaps:
        g = gaps[0]
        where = UNATTRIBUTED if g["parent"] is None else f"(rest of {g['parent']})"
        text.append("Largest unnamed time: ", style="bold")
        text.append(f"{where} {fmt_s(g['self_s'])} ({fmt_pct(g['share'])} of the run)")
        if g.get("functions"):
            of = f" (of {g['samples']} samples)" if g.get("samples") else ""
            text.append(f"; most sampled there{of}: {', '.join(g['functions'][:3])}")
    for what, times, total_s in repeated_work(run):
        text.append("\n" if text.plain else "")
        text.append("Repeated work: ", style="bold yellow")
        text.append(f"{what} {times}x: {fmt_s(total_s)}")
    return text


def phase_table(run: Run) -> Table:
    """Top-level phases plus an "(unattributed)" row sum to the run's wall time; a parent's
    own time over 2% of the run has its "(rest of NAME)" row, and under it (with py-spy) the
    Python functions sampled most in that time."""
    has_device = any(p.device_peak_allocated_bytes is not None for p in run.phases)
    table = Table(title="Phases", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0))
    # The one column that gives way on a narrow console (its cells are cut, never wrapped),
    # so a long function name never squeezes the numbers.
    table.add_column("phase")
    for col in ("wall", "share", "cpu", "rss peak", "+file pages", "moved", "GB/s"):
        table.add_column(col, justify="right", no_wrap=True)
    if has_device:
        table.add_column("device peak", justify="right", no_wrap=True)
    for row in phase_rows(run):
        name = "  " * row.depth + row.name + (f" ×{row.count}" if row.count > 1 else "")
        if not row.complete:
            name += " (cut short)"
        cells = [
            _phase_cell(name, row.depth, row.functions, filler=is_filler(row.name)),
            fmt_s(row.wall_s),
            fmt_pct(row.share),
            fmt_s(row.cpu_s) if not is_filler(row.name) else "-",
            fmt_bytes(row.rss_peak_bytes),
            fmt_bytes(row.file_rss_delta_bytes, signed=True) if row.file_rss_delta_bytes else "-",
            fmt_bytes(row.payload_bytes),
            f"{row.payload_gbps:.2f}" if row.payload_gbps is not None else "-",
        ]
        if has_device:
            cells.append(fmt_bytes(row.device_peak_allocated_bytes))
        table.add_row(*cells)
    return table


def _phase_cell(name: str, depth: int, functions: tuple[str, ...], *, filler: bool) -> Text:
    """The phase's name; under a gap row, one line per function py-spy sampled most in it
    (share first, so a cut line keeps it)."""
    text = Text(name, style="dim" if filler else "", no_wrap=True, overflow="ellipsis")
    for function in functions[:3]:
        text.append("\n" + "  " * (depth + 1) + "· " + function, style="dim")
    return text


def generation_table(run: Run) -> Table:
    table = Table(title="Generation", title_justify="left", show_header=False, pad_edge=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for k, v in generation_facts(run, gap="  ", note_traced=False):
        table.add_row(k, v)
    return table


def memory_text(run: Run) -> Text:
    mem = run.memory
    text = Text()
    if mem is None:
        return text
    text.append("Memory: ", style="bold")
    peak_phase = _phase_at(run, mem.peak_rss_t_s)
    text.append(f"peak RSS {fmt_bytes(mem.peak_rss_bytes)}")
    if peak_phase:
        text.append(f" during {peak_phase}")
    if mem.os_peak_rss_bytes:
        text.append(f" (kernel high-water mark {fmt_bytes(mem.os_peak_rss_bytes)})")
    n = len(mem.host.get("t_s", []))
    text.append(f"; {n} samples every {fmt_s(mem.interval_s)}")
    decode_interval_s = run.settings.get("decode_sample_interval_s")
    if decode_interval_s and decode_interval_s != mem.interval_s:
        text.append(f" ({fmt_s(decode_interval_s)} in decode)")
    if mem.peak_device_allocated_bytes is not None:
        text.append(
            f"\n        device allocated peak {fmt_bytes(mem.peak_device_allocated_bytes)}, "
            f"reserved peak {fmt_bytes(mem.peak_device_reserved_bytes)}"
        )
        if mem.peak_nvml_used_bytes is not None:
            text.append(f", NVML used peak {fmt_bytes(mem.peak_nvml_used_bytes)}")
    paging = weight_paging(run)
    if paging:
        shown = ", ".join(f"{name} {fmt_bytes(b)}" for name, b in paging[:4])
        text.append(f"\n        file-backed pages (mmapped weights, libraries) became resident in: {shown}")
    for phase in run.phases:
        granted = phase.detail.get("huge_page_placement")
        if granted:  # what the kernel gave the huge_pages switch, read back from smaps
            text.append(
                f"\n        weights on 2 MiB huge pages: {fmt_bytes(granted['huge_page_bytes'])} of "
                f"{fmt_bytes(granted['bytes_moved'])} moved in {phase.name} ({fmt_s(phase.wall_s)})"
            )
    return text


def _phase_at(run: Run, t_s: float | None) -> str | None:
    if t_s is None:
        return None
    inside = [p for p in run.phases if p.start_s <= t_s <= p.end_s]
    return max(inside, key=lambda p: p.depth).name if inside else None


def _generated_text(run: Run) -> Text:
    g = run.generation
    assert g is not None and g.text is not None
    body = g.text if len(g.text) <= TEXT_PREVIEW_CHARS else g.text[:TEXT_PREVIEW_CHARS] + "…"
    text = Text("Output: ", style="bold")
    text.append(body.replace("\n", "\\n"))
    return text
