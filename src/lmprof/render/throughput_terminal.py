"""`lmprof bench throughput`'s terminal report: one line per row and concurrency (medians over
rounds), each technique's paired gain over sequential with its spread, then the issue's targets
as measured, then the warnings. Plain text, fixed columns, no colour."""

from __future__ import annotations

import re

from lmprof.analyze.throughput import Cell, Gain, ThroughputSummary
from lmprof.record.load import length_bounds
from lmprof.record.throughput import ThroughputReport
from lmprof.render.units import fmt_bytes, fmt_pct, fmt_s

COLUMNS = ("row", "users", "out tok/s", "req/s", "goodput", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
           "server RSS", "KV max", "hit", "gain vs seq", "vs no cache")  # fmt: skip


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _gain(gain: Gain | None) -> str:
    s = gain.output_tps if gain else None
    if s is None:
        return "-"
    if s.rounds == 1:
        return f"{s.median:.2f}x"
    return f"{s.median:.2f}x ({s.lo:.2f}-{s.hi:.2f})"


def cell_values(cell: Cell, summary: ThroughputSummary) -> list[str]:
    key = (cell.row.name, cell.concurrency)
    if not cell.rounds:
        return [cell.row.name, str(cell.concurrency)] + ["-"] * (len(COLUMNS) - 2)
    return [
        cell.row.name,
        str(cell.concurrency),
        _num(cell.median("output_tps")),
        _num(cell.median("request_rps"), 2),
        _num(cell.median("goodput_rps"), 2),
        fmt_s(cell.median("ttft_p50_s")),
        fmt_s(cell.median("ttft_p99_s")),
        fmt_s(cell.median("tpot_p50_s")),
        fmt_s(cell.median("tpot_p99_s")),
        fmt_bytes(cell.median("rss_peak_bytes")),
        fmt_bytes(cell.median("kv_bytes_max")),
        fmt_pct(cell.hit_rate),
        _gain(summary.gains.get(key)),
        _gain(summary.base_gains.get(key)),
    ]


def shown_cells(summary: ThroughputSummary) -> list[Cell]:
    """Cells measured, or planned and failed (a level a row never ran is left out)."""
    return [c for c in summary.cells if c.rounds or c.errors]


def engine_switches(report: ThroughputReport) -> str:
    """', native step on, huge pages on' as the servers' startup lines said (every server of a
    bench is started with the same switches); '' for reports from before serve printed them."""
    said = {}
    for life in report.servers:
        for key, label in (("native", "native step"), ("huge_pages", "huge pages")):
            found = re.search(rf"\b{key}=(on|off)\b", life.startup_line)
            if found:
                said.setdefault(label, set()).add(found.group(1))
    return "".join(f", {label} {'/'.join(sorted(values))}" for label, values in said.items())


def render_throughput(report: ThroughputReport, summary: ThroughputSummary) -> str:
    s, m = report.settings, report.machine
    slo = ", ".join(f"{k} <= {fmt_s(v)}" for k, v in (s.get("slo_s") or {}).items()) or "none"
    lines = [
        f"lmprof bench throughput: {s.get('model_id')} (lmprof engine, fp32{engine_switches(report)}), "
        f"{report.created_at}",
        f"  CPU {m.get('cpu_model')} ({m.get('logical_cores')} logical), load average "
        f"{_loads(m.get('load_avg_start'))} at start, {_loads(m.get('load_avg_end'))} at end",
        f"  {s.get('rounds')} interleaved rounds; closed loop; {s.get('input_tokens')} input tokens "
        f"(+{s.get('prefix_tokens')} shared on shared-prefix), {s.get('output_tokens')} output tokens"
        f"{_mixed_lengths(s)}; repeat share {s.get('repeat_share')}; goodput objective {slo}",
        "",
    ]
    table = [list(COLUMNS)] + [cell_values(c, summary) for c in shown_cells(summary)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    for k, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "gain: output tok/s over the row named, paired by round (median, lowest-highest round)", ""]
    lines.append("targets:")
    for t in summary.targets:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t.met]
        lines.append(f"  {t.name}: {t.measured} (goal {t.goal}): {verdict}")
    if summary.warnings:
        lines.append("")
        lines += [f"warning: {w}" for w in summary.warnings]
    return "\n".join(lines) + "\n"


def _mixed_lengths(settings: dict) -> str:
    """` (mixed-lengths: 16-112 in, 8-56 out)`: the ranges each request drew its lengths from."""
    ratio = settings.get("mixed_range_ratio")
    inputs, outputs = settings.get("input_tokens"), settings.get("output_tokens")
    if "mixed-lengths" not in (settings.get("workloads") or []) or not ratio or not inputs or not outputs:
        return ""
    (in_lo, in_hi), (out_lo, out_hi) = length_bounds(inputs, ratio), length_bounds(outputs, ratio)
    return f" (mixed-lengths: {in_lo}-{in_hi} in, {out_lo}-{out_hi} out, range ratio {ratio:g})"


def _loads(values: list[float] | None) -> str:
    return "-" if not values else "/".join(f"{v:.2f}" for v in values)
