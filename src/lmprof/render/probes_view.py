"""The hardware probes as a table for `lmprof sysinfo --measure`: rates beside their ceilings.

Takes the saved probe record only; measures nothing.
"""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lmprof.analyze.hardware import best_read_gbps
from lmprof.record.probes import HardwareProbes, ProbeResult
from lmprof.render.units import fmt_bytes, fmt_s

PROBE_LABELS = {
    "read": "read (sum)",
    "read_huge_pages": "read, huge pages",
    "copy": "copy (r+w)",
    "matvec": "matvec W[out,in]",
    "matvec_column_major": "matvec W[in,out]",
    "matvec_native": "matvec lmprof native",
    "matvec_native_huge_pages": "matvec native (huge)",
    "matmul": "matmul n³",
    "h2d_pinned": "to device, pinned",
    "h2d_pageable": "to device, pageable",
}


def _rates(best: float | None, median: float | None) -> str:
    if best is None:
        return "-"
    return f"{_rate(best)} / {_rate(median)}"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def _size(probe: ProbeResult) -> str:
    if probe.kind == "matmul":
        return f"n={probe.shape[0]}"
    if probe.kind == "matvec":
        return f"{probe.shape[0]}×{probe.shape[1]}"
    return fmt_bytes(probe.bytes_per_repeat / (2 if probe.kind == "copy" else 1))


DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def probes_table(probes: HardwareProbes) -> Table:
    """One row per probe: GB/s and GFLOP/s as best / median of the repeats."""
    several_devices = len({p.device for p in probes.probes}) > 1
    table = Table(
        title="Hardware probes",
        title_justify="left",
        caption="GB/s and GFLOP/s: best / median of the runs",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("probe", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("GB/s", justify="right", no_wrap=True)
    table.add_column("GFLOP/s", justify="right", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    for p in probes.probes:
        # Text, not a str: rich would read "[out,in]" as markup.
        label = Text(PROBE_LABELS.get(p.name, p.name) + (f" ({p.device})" if several_devices else ""))
        dtype = DTYPE_SHORT.get(p.dtype or "", p.dtype or "-")
        if p.skipped:
            table.add_row(label, dtype, _size(p), Text(f"skipped: {p.skipped}", style="yellow"))
            continue
        table.add_row(
            label,
            dtype,
            _size(p),
            _rates(p.best_gbps, p.median_gbps),
            _rates(p.best_gflops, p.median_gflops) if p.flops_per_repeat else "-",
            str(len(p.times_s)),
        )
    return table


def render_probes(
    probes: HardwareProbes, cache_file: Path | None = None, from_cache: bool = False
) -> RenderableType:
    """The table, then the read ceiling a decode step is held to, then when and how it was measured."""
    parts: list[RenderableType] = [probes_table(probes)]
    devices = sorted({p.device for p in probes.probes})
    for device in devices:
        best = best_read_gbps(probes.probes, device)
        if best is not None:
            parts.append(
                Text(
                    f"Best read bandwidth on {device}: {best:.1f} GB/s (the batch-1 decode floor is "
                    "weight bytes over this)",
                    style="bold",
                )  # fmt: skip
            )
    load = ", ".join(f"{v:.2f}" for v in probes.load_avg_start)
    source = f"cached in {cache_file}" if from_cache else f"saved to {cache_file}"
    if cache_file is None:
        source = "not cached"
    parts.append(
        Text(
            f"Measured {probes.measured_at} at {probes.threads} torch threads, torch {probes.torch_version}, "
            f"in {fmt_s(probes.wall_s)}; load average {load} at start; {source}"
            + (" (rerun with --refresh)" if from_cache else ""),
            style="dim",
        )
    )
    return Group(*parts)
