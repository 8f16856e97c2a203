"""The report people open: one self-contained HTML page for a Run.

`render_html_report(run)` returns the page as text: every style and script inline, charts
drawn as inline SVG, no fonts, images or scripts fetched from anywhere, so it opens from
disk on an air-gapped machine. It reads only the Run (it never runs a model), so
`lmprof show RUN_DIR --html` rebuilds it from run.json. Everything that came from the
model or the user (prompt, generated text, model id, phase and frame names) is escaped.
"""

from __future__ import annotations

from pathlib import Path

from lmprof.record.files import write_atomic
from lmprof.record.run import STATUS_COMPLETE, Run
from lmprof.render.deep_view import PART_LABELS, own_work_line, traced_pace, untraced_caption
from lmprof.render.flame_embed import inline_flame
from lmprof.render.html_charts import (
    device_memory_svg,
    esc,
    generation_gantt_svg,
    host_memory_svg,
    latency_svg,
    memory_kind_svg,
    phase_gantt_svg,
)
from lmprof.render.html_tables import (
    copy_table_html,
    definition_list,
    flat_items,
    generation_html,
    memory_kind_rows,
    memory_kind_table_html,
    module_table_html,
    operator_table_html,
    phase_table_html,
    step_table_html,
    table_html,
)
from lmprof.render.system_view import system_line
from lmprof.render.terminal import memory_text
from lmprof.render.units import fmt_count, fmt_pct, fmt_s

REPORT_FILE = "report.html"

# (id, heading) in page order; every one is always present, saying so when it has no data.
SECTIONS = (
    ("system", "System"),
    ("timeline", "Phase timeline"),
    ("memory", "Memory over time"),
    ("memory-by-kind", "Memory by kind"),
    ("latency", "Per-token latency"),
    ("operators", "Operators and modules"),
    ("flame", "Flame graphs"),
    ("phases", "Phases"),
    ("text", "Prompt and generated text"),
)
NO_DEEP = "Not recorded: this run was profiled without <code>--deep</code>."


def write_html_report(run: Run, run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html atomically and return its path."""
    return write_atomic(Path(run_dir) / REPORT_FILE, render_html_report(run))


def render_html_report(run: Run) -> str:
    scripts: list[str] = []
    bodies = {
        "system": _system(run),
        "timeline": _timeline(run),
        "memory": _memory(run),
        "memory-by-kind": _memory_by_kind(run),
        "latency": _latency(run),
        "operators": _operators(run),
        "flame": _flames(run, scripts),
        "phases": phase_table_html(run),
        "text": _text(run),
    }
    nav = " ".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in SECTIONS)
    sections = "\n".join(
        f'<section id="{sid}">\n<h2>{esc(title)}</h2>\n{bodies[sid]}\n</section>' for sid, title in SECTIONS
    )
    title = f"lmprof: {_model_id(run)}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # The page needs nothing from the network; the policy makes a stray reference fail loudly.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n"
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<header>\n<h1>{esc(title)}</h1>\n{_headline(run)}\n<nav>{nav}</nav>\n</header>\n<main>\n{sections}\n</main>\n"
        f"<script>{SORT_SCRIPT}</script>\n"
        + "".join(f"<script>{s}</script>\n" for s in scripts)
        + "</body>\n</html>\n"
    )


def _model_id(run: Run) -> str:
    return str((run.model or {}).get("id") or " ".join(run.command[1:3]) or run.run_id)


def _headline(run: Run) -> str:
    m = run.model or {}
    bits = [m.get("architecture"), f"{fmt_count(m.get('parameter_count'))} params" if m.get("parameter_count") else None,
            m.get("dtype"), m.get("device"), f"wall {fmt_s(run.wall_s)}", f"run {run.run_id}", run.created_at]  # fmt: skip
    out = f'<p class="headline">{esc(" · ".join(str(b) for b in bits if b))}</p>'
    if run.status != STATUS_COMPLETE:
        err = run.error or {}
        out += f'<p class="status bad">{esc(run.status.upper())}: {esc(err.get("type", ""))} {esc(err.get("message", ""))}</p>'
    if run.command:
        out += f'<p class="command"><code>{esc(" ".join(run.command))}</code></p>'
    return out


def _system(run: Run) -> str:
    out = []
    if run.system:
        out.append(f"<p>{esc(system_line(run.system))}</p>")
        out.append(
            "<details><summary>Everything recorded about the machine</summary>"
            + definition_list(flat_items(run.system), "kv")
            + "</details>"
        )
    else:
        out.append("<p>No system information was recorded.</p>")
    if run.environment:
        out.append("<h3>Environment</h3>" + definition_list(flat_items(run.environment), "kv"))
    if run.warnings:
        out.append(
            '<h3>Warnings</h3><ul class="warnings">'
            + "".join(f"<li>{esc(w)}</li>" for w in run.warnings)
            + "</ul>"
        )
    return "\n".join(out)


def _timeline(run: Run) -> str:
    if not run.phases:
        return "<p>No phases were recorded.</p>"
    out = [phase_gantt_svg(run)]
    zoomed = generation_gantt_svg(run)
    if zoomed is not None:
        out.append("<h3>The generation call: prefill, then one bar per decode step</h3>" + zoomed)
    return "\n".join(out)


def _memory(run: Run) -> str:
    if run.memory is None:
        return "<p>No memory samples were recorded.</p>"
    out = [f"<p>{esc(memory_text(run).plain)}</p>".replace("\n", "<br>")]
    host = host_memory_svg(run)
    out.append("<h3>Host</h3>" + host if host else "<p>No host samples.</p>")
    device = device_memory_svg(run)
    if device:
        out.append("<h3>Device</h3>" + device)
    for note in run.memory.notes:
        out.append(f'<p class="note">{esc(note)}</p>')
    return "\n".join(out)


def _memory_by_kind(run: Run) -> str:
    by_kind = run.deep.memory_by_kind if run.deep is not None else None
    if not by_kind:
        return f"<p>{NO_DEEP}</p>"
    out = [memory_kind_table_html(by_kind), memory_kind_svg(memory_kind_rows(by_kind)) or ""]
    if by_kind.get("kv_growth_bytes_per_token") is not None:
        exp = by_kind.get("expected", {}).get("kv_bytes_per_token")
        out.append(
            f'<p class="note">KV cache grew {by_kind["kv_growth_bytes_per_token"]:.0f} bytes per token, measured from the '
            f"cache tensors; expected {esc(exp)} bytes from the model's shape. The activation expectation is a rough estimate.</p>"
        )
    return "\n".join(out)


def _latency(run: Run) -> str:
    out = [generation_html(run)]
    if run.generation is not None:
        chart = latency_svg(run.generation)
        out.append(chart if chart else "<p>Only one token was generated: no decode steps to draw.</p>")
    return "\n".join(out)


def _operators(run: Run) -> str:
    deep = run.deep
    if deep is None:
        return f"<p>{NO_DEEP}</p>"
    out = ['<p class="note">Click a column header to sort.</p>']
    for stage in ("decode", "prefill"):
        if stage in deep.step_breakdown:
            breakdown = deep.step_breakdown[stage]
            if breakdown.get("untraced"):
                out.append(_untraced_step_table_html(breakdown, f"{stage} step"))
            else:  # records from before issue 21: the traced step only
                out.append(step_table_html(breakdown, f"{stage} step"))
    for stage in ("decode", "prefill"):
        if deep.operators.get(stage):
            out.append(operator_table_html(deep.operators[stage], stage))
    for stage in ("decode", "prefill"):
        if deep.modules.get(stage):
            out.append(module_table_html(deep.modules[stage], stage))
    if deep.copies:
        out.append(copy_table_html(deep.copies))
    for name, cost in deep.overhead.items():
        if name == "lmprof":
            out.append(f'<p class="note">{esc(own_work_line(cost).plain)}</p>')
        elif "decode_slowdown" in cost:
            out.append(
                f'<p class="note">Cost of watching: {esc(traced_pace(name, cost))}; the step\'s '
                "shares are scaled to the untraced step, the operator and module tables are the traced call's, the "
                "generation figures the untraced one's.</p>"
            )
        elif "slowdown" in cost:
            out.append(
                f'<p class="note">Cost of watching: {esc(name)} slowed a calibration workload '
                f"{cost['slowdown']:.2f}x (paired runs with and without it); every phase ran under it.</p>"
            )
    return "\n".join(out)


def _untraced_step_table_html(breakdown: dict, label: str) -> str:
    """The step part by part as it ran untraced (the tracer's measured cost taken out, scaled to
    the untraced step), the traced figures beside it; the terminal's `step_table` in HTML."""
    untraced = breakdown["untraced"]
    step_s = untraced["step_s"] or 1e-12
    rows = []
    for key, text in PART_LABELS.items():
        value = untraced["per_step_s"].get(key, 0.0)
        traced = breakdown["per_step_s"].get(key)
        rows.append(
            [text, (fmt_s(value), value), (fmt_pct(value / step_s), value / step_s), (fmt_s(traced), traced)]
        )
    rows.append(
        [
            "total",
            (fmt_s(step_s), step_s),
            (fmt_pct(1.0), 1.0),
            fmt_s(breakdown["wall_s"] / breakdown["steps"]),
        ]
    )
    caption = f"One {label}, untraced (estimated from {breakdown['steps']} traced)"
    table = table_html(["part", "untraced", "share", "traced"], rows, cls="sortable steps", caption=caption)
    return table + f'<p class="note">{esc(untraced_caption(untraced))}</p>'


def _flames(run: Run, scripts: list[str]) -> str:
    if run.deep is None or not run.deep.flames:
        return f"<p>{NO_DEEP}</p>"
    out = [
        '<p class="note">Click a box to zoom, "Reset Zoom" to go back; "Search" (or Ctrl-F with the pointer over the graph) highlights frames by regular expression.</p>'
    ]
    for i, flame in enumerate(run.deep.flames):
        svg, script = inline_flame(flame, f"{_model_id(run)}: {flame.name}", key=f"{i}")
        out.append(f'<figure class="flame-wrap" data-flame-name="{esc(flame.name)}">{svg}</figure>')
        scripts.append(script)
    return "\n".join(out)


def _text(run: Run) -> str:
    g = run.generation
    if g is None or (g.prompt is None and g.text is None):
        return "<p>No prompt or generated text was recorded.</p>"
    out = []
    if g.prompt is not None:
        out.append(f'<h3>Prompt</h3><pre class="prompt">{esc(g.prompt)}</pre>')
    if g.text is not None:
        out.append(f'<h3>Generated</h3><pre class="generated">{esc(g.text)}</pre>')
    return "\n".join(out)


STYLE = """
:root { --fg: #1d1d1f; --muted: #666; --line: #e3e3e3; --accent: #1a56a0; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: var(--fg); background: #fff; }
header { padding: 1em 2em .5em; border-bottom: 1px solid var(--line); background: #fafafa; }
h1 { font-size: 1.35em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 0 0 .6em; } h3 { font-size: 1em; margin: 1em 0 .4em; }
nav a { margin-right: 1em; color: var(--accent); text-decoration: none; } nav a:hover { text-decoration: underline; }
main { padding: 0 2em 2em; max-width: 1250px; }
section { padding: 1.2em 0; border-bottom: 1px solid var(--line); }
.headline, .command, .note { color: var(--muted); margin: .2em 0; } .note { font-size: .92em; }
.status.bad { color: #b3261e; font-weight: 600; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .93em; }
caption { text-align: left; font-weight: 600; padding: .3em 0; }
th, td { padding: .2em .7em; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f5f5f7; white-space: nowrap; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: .75em; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; font-size: .75em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.operators td:last-child { font-family: ui-monospace, monospace; font-size: .85em; color: var(--muted); }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .15em 1.2em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
dl.kv { display: grid; grid-template-columns: max-content auto; gap: 0 1.2em; font-size: .9em; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
ul.warnings li { color: #946200; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f6f8; padding: .7em 1em; border-radius: 4px; }
svg.chart { max-width: 1000px; display: block; margin: .3em 0; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #333; }
svg.chart .tick { fill: #666; } svg.chart .rowlabel { fill: #444; }
svg.chart .grid { stroke: #eee; stroke-width: 1; }
svg.chart .phase text { fill: #fff; pointer-events: none; }
svg.chart .phase rect:hover, svg.chart .step:hover { stroke: #000; }
svg.chart .step.prefill { fill: #e15759; } svg.chart .step.decode { fill: #59a14f; stroke: #fff; stroke-width: .5; }
svg.chart .series { fill: none; stroke-width: 1.6; }
svg.chart .host-rss { stroke: #1a56a0; } svg.chart .host-file { stroke: #9c755f; stroke-dasharray: 4 2; }
svg.chart .device-allocated { stroke: #59a14f; } svg.chart .device-reserved { stroke: #f28e2b; stroke-dasharray: 4 2; }
svg.chart .device-nvml { stroke: #b07aa1; stroke-dasharray: 1 2; }
svg.chart .peak circle { fill: #b3261e; } svg.chart .peak text { fill: #b3261e; font-weight: 600; }
svg.chart .bandlabel { fill: #888; font-size: 10px; }
svg.chart .latency { stroke: #1a56a0; } svg.chart .dot { fill: #1a56a0; }
svg.chart .percentile line { stroke: #b3261e; stroke-dasharray: 5 3; stroke-width: 1; }
svg.chart .percentile text { fill: #b3261e; }
svg.chart .measured { fill: #1a56a0; } svg.chart .expected { fill: #bbb; }
figure.flame-wrap { margin: .5em 0 1.5em; overflow-x: auto; }
"""

# Sorts any table.sortable by the clicked column: numbers by their data-v, text otherwise.
SORT_SCRIPT = r"""
(function () {
  "use strict";
  function key(td) {
    var v = td.getAttribute("data-v");
    if (v !== null) { return v === "" ? -Infinity : parseFloat(v); }
    return td.textContent.trim().toLowerCase();
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var headers = table.querySelectorAll("thead th");
    Array.prototype.forEach.call(headers, function (th, col) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          var c = x < y ? -1 : (x > y ? 1 : 0);
          return ascending ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""
