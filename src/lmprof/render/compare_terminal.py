"""The terminal view of a Comparison: who is compared, the side-by-side table, thresholds, notes.

Returns a rich renderable; printing is the caller's business (as for the run summary).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lmprof.analyze.compare import Change, Comparison
from lmprof.analyze.thresholds import ThresholdCheck
from lmprof.render.compare_cells import (
    NOISE_RULE,
    fmt_beyond_noise,
    fmt_change,
    fmt_check,
    fmt_measure,
    group_line,
)


def render_comparison(comparison: Comparison, checks: Sequence[ThresholdCheck] = ()) -> RenderableType:
    parts: list[RenderableType] = [_header(comparison), comparison_table(comparison)]
    if checks:
        parts.append(_checks(comparison, checks))
    notes = Text(style="dim")
    for note in [*comparison.notes, NOISE_RULE]:
        notes.append(f"note: {note}\n")
    notes.rstrip()
    parts.append(notes)
    return Group(*parts)


def _header(comparison: Comparison) -> Text:
    text = Text()
    text.append("lmprof compare", style="bold")
    text.append(f"  {len(comparison.groups)} configurations, baseline {comparison.groups[0].label}")
    for i in range(len(comparison.groups)):
        text.append("\n" + group_line(comparison, i))
    return text


def comparison_table(comparison: Comparison) -> Table:
    base = comparison.groups[0].label
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("figure", no_wrap=True)
    for g in comparison.groups:
        table.add_column(g.label, justify="right")
    for g in comparison.groups[1:]:  # these wrap, rather than lose text, when many groups crowd the width
        table.add_column(f"{g.label} vs {base}")
        table.add_column("beyond noise")
    section = None
    for row in comparison.rows:
        if row.spec.section != section:
            section = row.spec.section
            table.add_row(Text(section, style="bold"))
        cells: list[Text | str] = ["  " + row.spec.name]
        cells += [fmt_measure(row.spec.unit, m) for m in row.measures]
        for change in row.changes:
            cells += [Text(fmt_change(change), style=_change_style(change)), fmt_beyond_noise(change)]
        table.add_row(*cells)
    return table


def _change_style(change: Change | None) -> str:
    if change is None or change.verdict == "same":
        return ""
    if change.beyond_noise is False:
        return "dim"
    colour = "green" if change.verdict == "better" else "red"
    return f"bold {colour}" if change.beyond_noise else colour


def _checks(comparison: Comparison, checks: Sequence[ThresholdCheck]) -> Text:
    text = Text()
    text.append("Thresholds (--fail-on)", style="bold")
    for check in checks:
        style = "bold red" if check.breached else ("green" if check.evaluated else "yellow")
        text.append("\n  " + fmt_check(check, comparison), style=style)
    return text
