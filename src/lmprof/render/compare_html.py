"""A Comparison as one self-contained HTML page: inline CSS, no scripts, no external resources.

Every string is passed through html.escape, so a model id or path holding markup shows
as text. `comparison_section_html` is the page body alone, for a larger report to embed.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from lmprof.analyze.compare import Change, Comparison
from lmprof.analyze.thresholds import ThresholdCheck
from lmprof.render.compare_cells import (
    NOISE_RULE,
    fmt_beyond_noise,
    fmt_change,
    fmt_check,
    fmt_delta,
    fmt_measure,
)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.3em; margin: 0 0 .6em; }
table { border-collapse: collapse; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e3e3e3; white-space: nowrap; }
th { text-align: left; background: #f5f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.section td { font-weight: 600; background: #fafafa; padding-top: .7em; }
code { font-size: .9em; color: #555; }
.better { color: #11772d; } .worse { color: #b3261e; }
.beyond { font-weight: 700; } .within { color: #888; }
.breached { color: #b3261e; font-weight: 700; } .ok { color: #11772d; } .skipped { color: #946200; }
.notes { color: #666; font-size: .9em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_comparison_html(comparison: Comparison, checks: Sequence[ThresholdCheck] = ()) -> str:
    title = "lmprof compare: " + " vs ".join(g.model_id or g.label for g in comparison.groups)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{comparison_section_html(comparison, checks)}</body>\n</html>\n"
    )


def comparison_section_html(comparison: Comparison, checks: Sequence[ThresholdCheck] = ()) -> str:
    base = comparison.groups[0].label
    out = ['<section class="comparison">\n<h1>lmprof compare</h1>\n<ul class="groups">\n']
    for i, g in enumerate(comparison.groups):
        what = " · ".join(str(x) for x in (g.model_id, g.dtype, g.device) if x)
        role = ", baseline" if i == 0 else ""
        out.append(
            f"<li><b>{_e(g.label)}</b> <code>{_e(g.source or ', '.join(g.run_ids))}</code> "
            f"{_e(what)} ({_e(g.description + role)})</li>\n"
        )
    out.append("</ul>\n<table>\n<thead><tr><th>figure</th>")
    out += [f"<th>{_e(g.label)}</th>" for g in comparison.groups]
    for g in comparison.groups[1:]:
        out.append(f"<th>{_e(g.label)} vs {_e(base)}</th><th>beyond noise</th>")
    out.append("</tr></thead>\n<tbody>\n")
    columns = 1 + len(comparison.groups) + 2 * (len(comparison.groups) - 1)
    section = None
    for row in comparison.rows:
        if row.spec.section != section:
            section = row.spec.section
            out.append(f'<tr class="section"><td colspan="{columns}">{_e(section)}</td></tr>\n')
        out.append(f"<tr><td>{_e(row.spec.label)} <code>{_e(row.spec.name)}</code></td>")
        out += [f'<td class="num">{_e(fmt_measure(row.spec.unit, m))}</td>' for m in row.measures]
        for change in row.changes:
            text = fmt_change(change)
            if change is not None and change.delta != 0:
                text += f" ({fmt_delta(row.spec.unit, change.delta)})"
            out.append(
                f'<td class="{_change_class(change)}">{_e(text)}</td><td>{_e(fmt_beyond_noise(change))}</td>'
            )
        out.append("</tr>\n")
    out.append("</tbody>\n</table>\n")
    if checks:
        out.append('<h2>Thresholds (<code>--fail-on</code>)</h2>\n<ul class="checks">\n')
        for check in checks:
            cls = "breached" if check.breached else ("ok" if check.evaluated else "skipped")
            out.append(f'<li class="{cls}">{_e(fmt_check(check, comparison))}</li>\n')
        out.append("</ul>\n")
    out.append('<div class="notes">\n')
    out += [f"<p>note: {_e(note)}</p>\n" for note in [*comparison.notes, NOISE_RULE]]
    out.append("</div>\n</section>\n")
    return "".join(out)


def _change_class(change: Change | None) -> str:
    if change is None or change.verdict == "same":
        return ""
    noise = {True: " beyond", False: " within", None: ""}[change.beyond_noise]
    return change.verdict + noise
