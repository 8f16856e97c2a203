"""Two or more load runs side by side (`lmprof compare` of load runs): a rich table per run
against the baseline, level by level, and the same as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lmprof.analyze.load_compare import HIGHER, LoadCheck, LoadComparison, LoadFigure
from lmprof.render.units import fmt_pct, fmt_s

# The figures a table shows (every figure is in the JSON and can be a --fail-on).
SHOWN = (
    "output_tps", "total_tps", "request_rps", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99",
    "itl_p50", "itl_p99", "e2el_p50", "e2el_p99", "ttft_sched_p99", "goodput_share", "error_share",
)  # fmt: skip


def fmt_value(figure: LoadFigure, value: float | None) -> str:
    if value is None:
        return "-"
    if figure.unit == "s":
        return fmt_s(value)
    if figure.unit == "share":
        return fmt_pct(value)
    return f"{value:,.2f} {figure.unit}"


def _change(figure: LoadFigure, relative: float | None, delta: float | None) -> Text:
    if delta is None:
        return Text("-")
    if relative is None:
        return Text(f"{delta:+.3g}")
    better = (delta > 0) == (figure.better == HIGHER)
    style = "green" if better and delta else ("red" if delta else "")
    return Text(f"{relative * 100:+.1f}%", style=style)


def render_load_comparison(comparison: LoadComparison, checks: Sequence[LoadCheck]) -> RenderableType:
    parts: list[RenderableType] = []
    breached = {(c.run, c.level, c.threshold.figure) for c in checks if c.breached}
    for label, changes in zip(comparison.labels[1:], comparison.changes):
        table = Table(title=f"{label} against {comparison.labels[0]}", title_justify="left")
        for name in ("level", "figure", "baseline", "this run", "change"):
            table.add_column(name, justify="left" if name in ("level", "figure") else "right", no_wrap=True)
        for ch in changes:
            if ch.figure.name not in SHOWN and (label, ch.level, ch.figure.name) not in breached:
                continue
            mark = " ✗ fail-on" if (label, ch.level, ch.figure.name) in breached else ""
            table.add_row(
                ch.level, ch.figure.name + mark, fmt_value(ch.figure, ch.base), fmt_value(ch.figure, ch.other),
                _change(ch.figure, ch.relative, ch.delta),
            )  # fmt: skip
        parts.append(table)
    for note in comparison.notes:
        parts.append(Text(note, style="yellow"))
    for check in checks:
        verdict = "BREACHED" if check.breached else ("ok" if check.value is not None else "not evaluated")
        if check.value is None:  # a relative change of a zero baseline, or a figure a run lacks
            verdict += " (the figure is missing, or 0 in the baseline: give an absolute amount)"
        parts.append(Text(f"--fail-on {check.threshold.text} at {check.level} ({check.run}): {verdict}"))
    return Group(*parts)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def render_load_comparison_json(comparison: LoadComparison, checks: Sequence[LoadCheck]) -> str:
    data = {
        "kind": "load_comparison",
        "baseline": comparison.labels[0],
        "runs": [
            {
                "label": label,
                "changes": [
                    {
                        "level": ch.level,
                        "figure": ch.figure.name,
                        "unit": ch.figure.unit,
                        "better": ch.figure.better,
                        "baseline": _finite(ch.base),
                        "value": _finite(ch.other),
                        "delta": _finite(ch.delta),
                        "relative": _finite(ch.relative),
                    }  # fmt: skip
                    for ch in changes
                ],
            }
            for label, changes in zip(comparison.labels[1:], comparison.changes)
        ],
        "notes": comparison.notes,
        "checks": [
            {
                "threshold": c.threshold.text,
                "run": c.run,
                "level": c.level,
                "value": _finite(c.value),
                "breached": c.breached,
            }  # fmt: skip
            for c in checks
        ],
    }
    return json.dumps(data, indent=1, allow_nan=False)
