"""The HTML report of a load run: one self-contained page (inline CSS and SVG, nothing
fetched), rebuilt from run.json alone by `lmprof show RUN_DIR --html`.

Charts: latency distributions (one CDF per figure, a line per level), each request's
timeline (scheduled -> sent -> first token -> end), output tokens/s over time with the
server's running/waiting requests, and for several levels throughput against latency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from lmprof.analyze.load import (
    RUNNING,
    WAITING,
    LoadSummary,
    e2el_s,
    output_tokens_over_time,
    summarize,
    tpot_s,
    ttft_s,
)
from lmprof.record.files import write_atomic
from lmprof.record.load import LoadRun
from lmprof.render.html_charts import LEFT_PX, RIGHT_PX, WIDTH_PX, Axis, esc, nice_ticks
from lmprof.render.load_json import load_summary_dict
from lmprof.render.units import fmt_pct, fmt_s

REPORT_FILE = "report.html"
COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
TIMELINE_MAX_ROWS = 300  # more requests are sampled evenly: the page stays light
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}svg{background:#fff}
.grid{stroke:#eee}.tick{font-size:11px;fill:#555}.series{fill:none;stroke-width:1.6}
.warn{color:#a60}.legend{font-size:12px}code{background:#f4f4f4;padding:0 3px}
"""


def write_load_html(run: LoadRun, run_dir: str | Path) -> Path:
    return write_atomic(Path(run_dir) / REPORT_FILE, render_load_html(run))


def _svg(kind: str, height: float, body: list[str], label: str, **data: object) -> str:
    attrs = "".join(f' data-{k.replace("_", "-")}="{esc(v)}"' for k, v in data.items())
    return (
        f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH_PX} {height:.0f}" '
        f'width="100%" role="img" aria-label="{esc(label)}"{attrs}>' + "".join(body) + "</svg>"
    )


def _axes(
    x: Axis, y: Axis, x_fmt: Callable, y_fmt: Callable, x_label: str, top: float, h: float
) -> list[str]:
    out = []
    for v in nice_ticks(x.lo, x.hi):
        out.append(f'<line class="grid" x1="{x(v):.1f}" y1="{top}" x2="{x(v):.1f}" y2="{top + h}"/>')
        out.append(
            f'<text class="tick" x="{x(v):.1f}" y="{top + h + 14}" text-anchor="middle">{esc(x_fmt(v) if v else "0")}</text>'
        )
    for v in nice_ticks(y.lo, y.hi, 5):
        out.append(f'<line class="grid" x1="{LEFT_PX}" y1="{y(v):.1f}" x2="{x.px_hi}" y2="{y(v):.1f}"/>')
        out.append(
            f'<text class="tick" x="{LEFT_PX - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{esc(y_fmt(v) if v else "0")}</text>'
        )
    out.append(
        f'<text class="tick" x="{(x.px_lo + x.px_hi) / 2:.0f}" y="{top + h + 30}" text-anchor="middle">{esc(x_label)}</text>'
    )
    return out  # fmt: skip


def line_chart(
    kind: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    x_fmt: Callable,
    y_fmt: Callable,
    x_label: str,
    markers: bool = False,
) -> str | None:
    """Lines (label, xs, ys), one colour each, with a legend."""
    series = [s for s in series if s[1]]
    if not series:
        return None
    top, h = 10, 220
    xs = [v for s in series for v in s[1]]
    ys = [v for s in series for v in s[2]]
    x = Axis(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, LEFT_PX, WIDTH_PX - RIGHT_PX)
    y = Axis(0.0, max(ys) * 1.08 or 1.0, top + h, top)
    body = _axes(x, y, x_fmt, y_fmt, x_label, top, h)
    for i, (label, sx, sy) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{x(a):.2f},{y(b):.2f}" for a, b in zip(sx, sy))
        body.append(
            f'<polyline class="series" stroke="{colour}" data-series="{esc(label)}" data-points="{len(sx)}" '
            f'points="{pts}"><title>{esc(label)}</title></polyline>'
        )
        if markers:
            body += [
                f'<circle cx="{x(a):.2f}" cy="{y(b):.2f}" r="3" fill="{colour}"/>' for a, b in zip(sx, sy)
            ]
        lx = LEFT_PX + 10 + (i % 4) * 210
        ly = top + h + 46 + (i // 4) * 16
        body.append(
            f'<g class="legend"><rect x="{lx}" y="{ly - 9}" width="12" height="10" fill="{colour}"/>'
            f'<text x="{lx + 16}" y="{ly}">{esc(label)}</text></g>'
        )
    height = top + h + 56 + ((len(series) - 1) // 4) * 16
    return _svg(kind, height, body, kind.replace("-", " "), series=len(series))


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]


def latency_cdfs(run: LoadRun, summary: LoadSummary) -> list[tuple[str, str]]:
    charts = []
    getters = {"TTFT": ttft_s, "TPOT": tpot_s, "E2EL": e2el_s}
    for name, getter in getters.items():
        series = []
        for s in summary.levels:
            vals = [v for r in run.requests if r.level == s.index and r.ok and not r.warmup
                    if (v := getter(r)) is not None]  # fmt: skip
            series.append((s.title, *cdf(vals)))
        chart = line_chart(f"cdf-{name.lower()}", series, fmt_s, fmt_pct, f"{name} (share of requests below)")
        if chart:
            charts.append((name, chart))
    itl = [
        (s.title, *cdf([g for r in run.requests if r.level == s.index and r.ok and not r.warmup for g in r.chunk_gaps_s]))
        for s in summary.levels
    ]  # fmt: skip
    chart = line_chart("cdf-itl", itl, fmt_s, fmt_pct, "ITL (share of gaps below)")
    if chart:
        charts.append(("ITL", chart))
    return charts


def request_timeline_svg(run: LoadRun) -> str | None:
    """A row per request: grey from scheduled to sent (client queueing), orange to the first
    token, blue to the last; red for a failure."""
    reqs = [r for r in run.requests if not r.warmup]
    if not reqs:
        return None
    step = max(1, len(reqs) // TIMELINE_MAX_ROWS)
    shown = reqs[::step]
    row = max(2.0, min(8.0, 600 / len(shown)))
    top = 10
    h = row * len(shown)
    x = Axis(min(r.scheduled_s for r in shown), max(r.end_s for r in shown), LEFT_PX, WIDTH_PX - RIGHT_PX)
    body = []
    for v in nice_ticks(x.lo, x.hi):
        body.append(f'<line class="grid" x1="{x(v):.1f}" y1="{top}" x2="{x(v):.1f}" y2="{top + h}"/>')
        body.append(f'<text class="tick" x="{x(v):.1f}" y="{top + h + 14}" text-anchor="middle">{esc(fmt_s(v))}</text>')  # fmt: skip
    for i, r in enumerate(shown):
        y = top + i * row
        segs = [(r.scheduled_s, r.sent_s, "#bbb")]
        if r.ok and r.first_token_s is not None:
            segs += [(r.sent_s, r.first_token_s, "#f28e2b"), (r.first_token_s, r.end_s, "#4e79a7")]
        else:
            segs.append((r.sent_s, r.end_s, "#4e79a7" if r.ok else "#e15759"))
        tip = (f"request {r.index}: scheduled {fmt_s(r.scheduled_s)}, sent +{fmt_s(r.sent_s - r.scheduled_s)}, "
               + (f"first token +{fmt_s(r.first_token_s - r.sent_s)}, " if r.first_token_s is not None else "")
               + f"end +{fmt_s(r.end_s - r.sent_s)}" + (f", {r.error_kind}" if r.error_kind else ""))  # fmt: skip
        parts = "".join(
            f'<rect x="{x(a):.2f}" y="{y:.2f}" width="{max(x(b) - x(a), 0.5):.2f}" height="{max(row - 1, 1):.2f}" fill="{c}"/>'
            for a, b, c in segs
        )
        body.append(f'<g class="request" data-index="{r.index}"><title>{esc(tip)}</title>{parts}</g>')
    legend = (("#bbb", "scheduled → sent (client queueing)"), ("#f28e2b", "sent → first token"),
              ("#4e79a7", "first token → end"), ("#e15759", "failed"))  # fmt: skip
    for i, (c, label) in enumerate(legend):
        lx = LEFT_PX + i * 250
        body.append(f'<g class="legend"><rect x="{lx}" y="{top + h + 24}" width="12" height="10" fill="{c}"/>'
                    f'<text x="{lx + 16}" y="{top + h + 33}">{esc(label)}</text></g>')  # fmt: skip
    return _svg("request-timeline", top + h + 44, body, "per-request timeline", requests=len(shown))


def throughput_svg(run: LoadRun) -> str | None:
    t, tps = output_tokens_over_time(run)
    series = [("output tokens/s (client)", t, tps)]
    return line_chart("throughput-time", series, fmt_s, lambda v: f"{v:,.0f}", "time (tokens/s, 1 s bins)")


def server_svg(run: LoadRun) -> str | None:
    series = []
    for label, names in (("server running", RUNNING), ("server waiting", WAITING)):
        pts = [
            (m.t_s, m.values[n])
            for m in run.metrics
            if (n := next((k for k in names if k in m.values), None))
        ]
        if pts:
            series.append((label, [p[0] for p in pts], [p[1] for p in pts]))
    return line_chart("server-gauges", series, fmt_s, lambda v: f"{v:g}", "time (requests, from /metrics)")


def sweep_svg(summary: LoadSummary) -> str | None:
    levels = sorted((s for s in summary.levels if s.latency_s.get("e2el")), key=lambda s: s.output_tps)
    if len(levels) < 2:
        return None
    series = []
    for metric, stat in (("ttft", "p50"), ("ttft", "p99"), ("tpot", "p50"), ("e2el", "p50")):
        pairs = [(s.output_tps, s.latency_s[metric][stat]) for s in levels if s.latency_s.get(metric)]
        series.append((f"{metric.upper()} {stat}", [p[0] for p in pairs], [p[1] for p in pairs]))
    return line_chart("sweep", series, lambda v: f"{v:,.0f}", fmt_s, "output tokens/s", markers=True)


def _levels_html(summary: LoadSummary) -> str:
    head = ("level", "ok/sent", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "ITL p99",
            "E2EL p99", "E2EL p99 from scheduled", "goodput")  # fmt: skip
    rows = []
    for s in summary.levels:

        def d(key: str, stat: str, dist: dict | None = None, s=s) -> str:
            dist = dist if dist is not None else s.latency_s.get(key)
            return fmt_s(dist[stat]) if dist else "-"

        cells = (s.title, f"{s.completed}/{s.sent}", f"{s.request_rps:.2f}", f"{s.output_tps:,.1f}",
                 d("ttft", "p50"), d("ttft", "p99"), d("tpot", "p50"), d("itl", "p99"), d("e2el", "p99"),
                 d("", "p99", s.scheduled_latency_s.get("e2el")),
                 fmt_pct(s.goodput["share"]) if s.goodput else "-")  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def render_load_html(run: LoadRun) -> str:
    summary = summarize(run)
    facts = load_summary_dict(run, summary)
    srv = run.server
    sections = [
        f"<h1>lmprof load: {esc(srv.get('base_url', ''))}{esc(srv.get('endpoint', ''))}</h1>",
        f"<p>model <code>{esc(srv.get('model'))}</code>, server {esc(srv.get('version') or srv.get('server_header') or 'unknown')}, "
        f"status <b>{esc(run.status)}</b>, wall {esc(fmt_s(run.wall_s))}, created {esc(run.created_at)}</p>",
        "".join(f'<p class="warn">{esc(w)}</p>' for w in summary.warnings),
        "<h2>Levels</h2>", _levels_html(summary),
    ]  # fmt: skip
    for title, chart in (
        ("Throughput against latency", sweep_svg(summary)),
        ("Per-request timeline", request_timeline_svg(run)),
        ("Output tokens over time", throughput_svg(run)),
        ("Server gauges", server_svg(run)),
    ):
        sections.append(f"<h2>{esc(title)}</h2>" + (chart or "<p>Not recorded in this run.</p>"))
    sections.append("<h2>Latency distributions</h2>")
    sections += [f"<h3>{esc(name)}</h3>{chart}" for name, chart in latency_cdfs(run, summary)]
    sections.append("<h2>Settings</h2><pre>" + esc(_pretty(facts["settings"])) + "</pre>")
    body = "\n".join(sections)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>lmprof load {esc(run.run_id)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def _pretty(data: object) -> str:
    import json

    return json.dumps(data, indent=1, default=str)
