"""`lmprof profile --repeat N`: N cold runs, each in its own process, as one group.

Each repeat is a fresh interpreter, so imports, loading and the first forward pass are
cold every time, as in the first run: the spread across repeats is the run-to-run noise
that `lmprof compare` needs. Repeats go to OUT/rep-1 ... OUT/rep-N.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from lmprof.cli.report_console import report_console
from lmprof.errors import UsageError


def strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """argv without `--name VALUE` / `--name=VALUE` for each name."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(n + "=") for n in names):
            continue
        out.append(arg)
    return out


def run_repeats(argv: list[str], repeat: int, out: Path, as_json: bool) -> int:
    if repeat < 2:
        raise UsageError(f"--repeat must be at least 2, got {repeat}")
    base = strip_options(argv, ("--repeat", "--out"))
    console = Console(stderr=as_json)
    for k in range(1, repeat + 1):
        rep_dir = out / f"rep-{k}"
        console.print(f"[bold]repeat {k}/{repeat}[/bold] -> {rep_dir}")
        proc = subprocess.run(
            [sys.executable, "-m", "lmprof", *base, "--out", str(rep_dir)], stdout=subprocess.DEVNULL
        )
        if proc.returncode != 0:
            return proc.returncode
    from lmprof.record.groups import load_run_group

    table = spread_table(load_run_group(out))
    console = report_console(table, stderr=as_json)
    console.print(table)
    console.print(f"{repeat} runs saved under {out}; compare with: lmprof compare {out} OTHER_RUNS")
    return 0


def spread_table(group):
    """Median, range and relative half-range of each headline figure over the repeats."""
    from rich import box
    from rich.table import Table

    from lmprof.analyze.compare import FIGURES, group_measure
    from lmprof.render.compare_cells import fmt_value

    table = Table(
        title=f"{len(group.runs)} repeats: run-to-run noise", title_justify="left", box=box.SIMPLE_HEAD
    )
    for col in ("figure", "median", "min", "max", "± half-range"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for spec in FIGURES:
        m = group_measure(group, spec)
        if m is None:
            continue
        rel = f"{100 * m.spread / m.center:.1f}%" if m.spread is not None and m.center else "-"
        table.add_row(spec.label, fmt_value(spec.unit, m.center), fmt_value(spec.unit, m.low),
                      fmt_value(spec.unit, m.high), rel)  # fmt: skip
    return table
