"""The HTML report of `lmprof bench throughput`: one self-contained page (inline CSS and SVG)
with the table, the targets, and plots: throughput against latency per scheduler (no sharing,
and mixed lengths where measured), gain against cache hit rate, and server memory against
concurrency."""

from __future__ import annotations

from pathlib import Path

from lmprof.analyze.throughput import ThroughputSummary
from lmprof.record.files import write_atomic
from lmprof.record.throughput import ThroughputReport
from lmprof.render.html_charts import esc
from lmprof.render.load_html import _CSS, line_chart
from lmprof.render.throughput_terminal import COLUMNS, cell_values, shown_cells
from lmprof.render.units import fmt_bytes, fmt_pct, fmt_s

REPORT_FILE = "report.html"


def _series(summary: ThroughputSummary, rows, x_name: str, y_name: str):
    out = []
    for row in rows:
        pairs = []
        for cell in summary.cells:
            if cell.row.name != row.name:
                continue
            x = cell.concurrency if x_name == "concurrency" else cell.median(x_name)
            y = cell.median(y_name)
            if x is not None and y is not None:
                pairs.append((x, y))
        pairs.sort()
        out.append((row.name, [p[0] for p in pairs], [p[1] for p in pairs]))
    return out


def throughput_latency_svg(
    report: ThroughputReport, summary: ThroughputSummary, stat: str, workload: str = "no-sharing"
) -> str | None:
    rows = [r for r in report.rows if r.workload == workload]
    if workload == "no-sharing" and not any(r.workload == "mixed-lengths" for r in report.rows):
        rows = rows or report.rows  # a report on cache workloads alone: every row
    kind = (
        f"throughput-latency-{stat}" if workload == "no-sharing" else f"throughput-latency-{workload}-{stat}"
    )
    series = _series(summary, rows, "output_tps", f"ttft_{stat}_s")
    return line_chart(kind, series, lambda v: f"{v:,.0f}", fmt_s, "output tokens/s", True)


def gain_hit_rate_svg(report: ThroughputReport, summary: ThroughputSummary) -> str | None:
    series = []
    for row in report.rows:
        if not (row.prefix_cache or row.response_cache):
            continue
        pairs = []
        for cell in summary.cells:
            gain = summary.base_gains.get((cell.row.name, cell.concurrency))
            if cell.row.name == row.name and cell.hit_rate is not None and gain and gain.output_tps:
                pairs.append((cell.hit_rate, gain.output_tps.median))
        pairs.sort()
        series.append((row.name, [p[0] for p in pairs], [p[1] for p in pairs]))
    return line_chart("gain-hit-rate", series, fmt_pct, lambda v: f"{v:.2f}x", "cache hit rate", True)


def memory_svg(report: ThroughputReport, summary: ThroughputSummary) -> str | None:
    series = _series(summary, report.rows, "concurrency", "rss_peak_bytes")
    return line_chart("memory-concurrency", series, lambda v: f"{v:g}", fmt_bytes, "concurrent users", True)


def render_throughput_html(report: ThroughputReport, summary: ThroughputSummary) -> str:
    s, m = report.settings, report.machine
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body_rows = "".join(
        "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in cell_values(c, summary)) + "</tr>"
        for c in shown_cells(summary)
    )
    targets = "".join(
        f"<li>{esc(t.name)}: <b>{esc(t.measured)}</b> (goal {esc(t.goal)}): "
        f"{esc({True: 'met', False: 'missed', None: 'not measured'}[t.met])}</li>"
        for t in summary.targets
    )
    warnings = "".join(f'<li class="warn">{esc(w)}</li>' for w in summary.warnings)
    charts = [
        ("Output tokens/s against TTFT p50, per scheduler (no sharing)", throughput_latency_svg(report, summary, "p50")),
        ("Output tokens/s against TTFT p99, per scheduler (no sharing)", throughput_latency_svg(report, summary, "p99")),
        ("Output tokens/s against TTFT p50, per scheduler (mixed lengths)",
         throughput_latency_svg(report, summary, "p50", "mixed-lengths")),
        ("Output tokens/s against TTFT p99, per scheduler (mixed lengths)",
         throughput_latency_svg(report, summary, "p99", "mixed-lengths")),
        ("Gain over the same scheduler without caches, against the measured cache hit rate",
         gain_hit_rate_svg(report, summary)),
        ("Server peak RSS against concurrent users", memory_svg(report, summary)),
    ]  # fmt: skip
    plots = "".join(f"<h2>{esc(title)}</h2>{svg}" for title, svg in charts if svg)
    body = (
        f"<h1>lmprof bench throughput: {esc(s.get('model_id'))}</h1>"
        f"<p>{esc(report.created_at)}; CPU {esc(m.get('cpu_model'))} ({esc(m.get('logical_cores'))} logical); "
        f"{esc(s.get('rounds'))} interleaved rounds; goodput objective "
        f"{esc(', '.join(f'{k} <= {fmt_s(v)}' for k, v in (s.get('slo_s') or {}).items()) or 'none')}</p>"
        f"<table><tr>{head}</tr>{body_rows}</table><h2>Targets</h2><ul>{targets}</ul>"
        + (f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else "")
        + plots
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>lmprof bench throughput</title>'
        f"<style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_throughput_html(report: ThroughputReport, summary: ThroughputSummary, out_dir: str | Path) -> Path:
    return write_atomic(Path(out_dir) / REPORT_FILE, render_throughput_html(report, summary))
