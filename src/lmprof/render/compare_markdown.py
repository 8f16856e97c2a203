"""A Comparison as GitHub-flavoured markdown, to paste into a pull request.

Strings that came from runs (paths, model ids) are HTML-escaped and have their table
pipes escaped, so a model id cannot break the table or inject markup.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from lmprof.analyze.compare import Comparison
from lmprof.analyze.thresholds import ThresholdCheck
from lmprof.render.compare_cells import (
    NOISE_RULE,
    fmt_beyond_noise,
    fmt_change,
    fmt_check,
    fmt_delta,
    fmt_measure,
    group_line,
)


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def render_comparison_markdown(comparison: Comparison, checks: Sequence[ThresholdCheck] = ()) -> str:
    base = comparison.groups[0].label
    lines = ["### lmprof compare", ""]
    lines += [f"- {_cell(group_line(comparison, i))}" for i in range(len(comparison.groups))]
    lines.append("")
    header = ["figure", *(g.label for g in comparison.groups)]
    for g in comparison.groups[1:]:
        header += [f"{g.label} vs {base}", "beyond noise"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append(
        "|"
        + "|".join([":--", *["--:"] * len(comparison.groups), *[":--", ":--"] * (len(comparison.groups) - 1)])
        + "|"
    )
    for row in comparison.rows:
        cells = [f"{_cell(row.spec.label)} (`{row.spec.name}`)"]
        cells += [_cell(fmt_measure(row.spec.unit, m)) for m in row.measures]
        for change in row.changes:
            text = fmt_change(change)
            if change is not None and change.delta != 0:
                text += f" ({fmt_delta(row.spec.unit, change.delta)})"
            if change is not None and change.beyond_noise and change.verdict != "same":
                text = f"**{text}**"
            cells += [_cell(text), _cell(fmt_beyond_noise(change))]
        lines.append("| " + " | ".join(cells) + " |")
    if checks:
        lines += ["", "**Thresholds** (`--fail-on`)", ""]
        for check in checks:
            mark = "❌" if check.breached else ("✅" if check.evaluated else "⚠️")
            lines.append(f"- {mark} {_cell(fmt_check(check, comparison))}")
    lines.append("")
    lines += [f"> {_cell(note)}  " for note in [*comparison.notes, NOISE_RULE]]
    return "\n".join(lines).rstrip() + "\n"
