"""Inline SVG charts for the HTML report: the phase timeline, memory over time and
per-token latency. Each takes a Run (or part of one) and returns SVG markup as text;
nothing is loaded from anywhere, so the report opens from disk.

Times are drawn relative to the run's first timestamp. Every label that came from the
run (phase names) goes through `esc`, so markup in a name shows as text.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lmprof.record.run import Generation, Run
from lmprof.render.perfetto import token_steps
from lmprof.render.units import fmt_bytes, fmt_s

WIDTH_PX = 1000
LEFT_PX = 150  # room for row labels and the y axis
RIGHT_PX = 20
ROW_PX = 22
PHASE_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#e15759", "#9c755f")
BAND_COLOURS = ("#4e79a7", "#f28e2b")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def esc(text: object) -> str:
    """Text safe in HTML/SVG element content and double-quoted attributes."""
    return html.escape(_CONTROL.sub("\ufffd", str(text)), quote=True)


@dataclass(frozen=True)
class Axis:
    """A linear map from data values to pixels."""

    lo: float
    hi: float
    px_lo: float
    px_hi: float

    def __call__(self, value: float) -> float:
        span = (self.hi - self.lo) or 1.0
        return self.px_lo + (value - self.lo) / span * (self.px_hi - self.px_lo)


def run_origin_s(run: Run) -> float:
    times = [p.start_s for p in run.phases]
    if run.memory is not None:
        times += list(run.memory.host.get("t_s", [])[:1]) + list((run.memory.device or {}).get("t_s", [])[:1])
    finite = [t for t in times if t is not None and math.isfinite(t)]
    return min(finite) if finite else 0.0


def run_end_s(run: Run, origin_s: float) -> float:
    times = [p.end_s for p in run.phases] + [origin_s + run.wall_s]
    if run.memory is not None:
        times += list(run.memory.host.get("t_s", [])[-1:]) + list(
            (run.memory.device or {}).get("t_s", [])[-1:]
        )
    return max(t for t in times if t is not None and math.isfinite(t))


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def byte_ticks(hi: float) -> list[float]:
    """Round numbers of the unit the axis will print (MiB, GiB), not of bytes."""
    scale = next((1 << s for s in (30, 20, 10) if hi >= 2 * (1 << s)), 1)
    return [t * scale for t in nice_ticks(0, hi / scale, 5)]


def _time_axis(x: Axis, y_px: float, height_px: float) -> list[str]:
    out = []
    for t in nice_ticks(x.lo, x.hi):
        px = x(t)
        out.append(
            f'<line class="grid" x1="{px:.1f}" y1="{y_px:.1f}" x2="{px:.1f}" y2="{y_px + height_px:.1f}"/>'
        )
        out.append(
            f'<text class="tick" x="{px:.1f}" y="{y_px + height_px + 14:.1f}" text-anchor="middle">{esc(fmt_s(t) if t else "0")}</text>'
        )
    return out


def _svg(kind: str, height_px: float, body: list[str], label: str, **data: object) -> str:
    attrs = "".join(f' data-{k.replace("_", "-")}="{esc(v)}"' for k, v in data.items())
    return (
        f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH_PX} {height_px:.0f}" '
        f'width="100%" role="img" aria-label="{esc(label)}"{attrs}>' + "".join(body) + "</svg>"
    )


# --- phase timeline --------------------------------------------------------------------


def phase_gantt_svg(run: Run) -> str:
    """Phases as bars, one row per depth, over the whole run; the primary generation's
    token steps (prefill, then one bar per decode step) in a row of their own."""
    origin = run_origin_s(run)
    end = run_end_s(run, origin)
    return _gantt(run, lo_s=origin, hi_s=end, origin_s=origin, kind="gantt", label="phase timeline")


def generation_gantt_svg(run: Run) -> str | None:
    """The same, zoomed on the primary generation call, where the decode steps are visible."""
    g = run.generation
    if g is None:
        return None
    lo = min(g.start_s, g.first_token_s - g.prefill_s)
    hi = max(g.end_s, max((e for _, e in token_steps(g)), default=g.end_s))
    # Ticks count from the call's start: seconds since the run began would all read alike.
    return _gantt(
        run, lo_s=lo, hi_s=hi, origin_s=lo, kind="gantt-generation", label="generation call timeline"
    )


def _gantt(run: Run, lo_s: float, hi_s: float, origin_s: float, kind: str, label: str) -> str:
    pad = (hi_s - lo_s) * 0.01
    x = Axis(lo_s - origin_s - pad, hi_s - origin_s + pad, LEFT_PX, WIDTH_PX - RIGHT_PX)
    shown = [p for p in run.phases if p.end_s >= lo_s - pad and p.start_s <= hi_s + pad]
    depths = max((p.depth for p in shown), default=0) + 1
    steps = token_steps(run.generation) if run.generation is not None else []
    rows = depths + (1 if steps else 0)
    top = 8
    height = top + rows * ROW_PX + 24
    body = _time_axis(x, top, rows * ROW_PX)
    for d in range(depths):
        body.append(
            f'<text class="rowlabel" x="{LEFT_PX - 8}" y="{top + d * ROW_PX + 15}" text-anchor="end">depth {d}</text>'
        )
    for p in shown:
        x0 = max(x(p.start_s - origin_s), x.px_lo)
        x1 = min(x(p.end_s - origin_s), x.px_hi)
        w = max(x1 - x0, 0.8)
        y = top + p.depth * ROW_PX
        colour = PHASE_COLOURS[hash_name(p.name) % len(PHASE_COLOURS)]
        tip = f"{p.name}: {fmt_s(p.wall_s)} (from {fmt_s(p.start_s - origin_s)})" + (
            "" if p.complete else ", cut short"
        )
        text = _fit(p.name, w)
        body.append(
            f'<g class="phase" data-name="{esc(p.name)}" data-depth="{p.depth}"><title>{esc(tip)}</title>'
            f'<rect x="{x0:.2f}" y="{y + 2}" width="{w:.2f}" height="{ROW_PX - 4}" fill="{colour}" rx="2"/>'
            + (f'<text x="{x0 + 3:.2f}" y="{y + 15}">{esc(text)}</text>' if text else "")
            + "</g>"
        )
    if steps:
        y = top + depths * ROW_PX
        body.append(f'<text class="rowlabel" x="{LEFT_PX - 8}" y="{y + 15}" text-anchor="end">tokens</text>')
        for i, (s, e) in enumerate(steps):
            x0 = x(s - origin_s)
            w = max(x(e - origin_s) - x0, 0.8)
            what = "prefill → token 1" if i == 0 else f"decode step {i} → token {i + 1}"
            cls = "step prefill" if i == 0 else "step decode"
            body.append(
                f'<rect class="{cls}" x="{x0:.2f}" y="{y + 3}" width="{w:.2f}" height="{ROW_PX - 6}">'
                f"<title>{esc(what)}: {esc(fmt_s(e - s))}</title></rect>"
            )
    return _svg(kind, height, body, label, steps=len(steps), phases=len(shown))


def hash_name(name: str) -> int:
    """A stable small hash (not hash(), which changes per process) so colours repeat across runs."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


def _fit(name: str, width_px: float, char_px: float = 6.6) -> str:
    max_chars = int((width_px - 6) // char_px)
    if max_chars < 3:
        return ""
    return name if len(name) <= max_chars else name[: max_chars - 1] + "…"


# --- memory over time ------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    key: str  # a CSS class and data attribute: "host-rss", "device-allocated"
    label: str
    t_s: Sequence[float]
    values: Sequence[float]


def memory_svg(run: Run, series: Sequence[Series], peak: tuple[float, float] | None, kind: str) -> str:
    """Lines of memory samples (one point per sample), top-level phases as bands behind
    them, and the peak marked."""
    origin = run_origin_s(run)
    end = run_end_s(run, origin)
    top, plot_h = 22, 220
    x = Axis(0.0, end - origin, LEFT_PX, WIDTH_PX - RIGHT_PX)
    vmax = max([max(s.values, default=0) for s in series] + [peak[1] if peak else 0, 1])
    y = Axis(0.0, vmax * 1.08, top + plot_h, top)
    body = []
    for i, p in enumerate(p for p in run.phases if p.depth == 0):
        x0, x1 = x(p.start_s - origin), x(p.end_s - origin)
        body.append(
            f'<g class="band" data-name="{esc(p.name)}"><title>{esc(p.name)}: {esc(fmt_s(p.wall_s))}</title>'
            f'<rect x="{x0:.2f}" y="{top}" width="{max(x1 - x0, 0.5):.2f}" height="{plot_h}" '
            f'fill="{BAND_COLOURS[i % 2]}" fill-opacity="0.08"/>'
            + (f'<text class="bandlabel" x="{x0 + 2:.1f}" y="{top - 6}">{esc(_fit(p.name, x1 - x0, 6))}</text>' if _fit(p.name, x1 - x0, 6) else "")
            + "</g>"
        )  # fmt: skip
    body += _time_axis(x, top, plot_h)
    for v in byte_ticks(vmax * 1.08):
        py = y(v)
        body.append(
            f'<line class="grid" x1="{LEFT_PX}" y1="{py:.1f}" x2="{WIDTH_PX - RIGHT_PX}" y2="{py:.1f}"/>'
        )
        body.append(
            f'<text class="tick" x="{LEFT_PX - 6}" y="{py + 4:.1f}" text-anchor="end">{esc(fmt_bytes(v))}</text>'
        )
    for s in series:
        pts = " ".join(f"{x(t - origin):.2f},{y(v):.2f}" for t, v in zip(s.t_s, s.values))
        body.append(
            f'<polyline class="series {s.key}" data-series="{s.key}" data-points="{len(s.values)}" points="{pts}">'
            f"<title>{esc(s.label)}</title></polyline>"
        )
    if peak is not None:
        px, py = x(peak[0] - origin), y(peak[1])
        anchor = "end" if px > WIDTH_PX * 0.75 else "start"
        dx = -8 if anchor == "end" else 8
        body.append(
            f'<g class="peak" data-t-s="{peak[0] - origin:.6g}" data-bytes="{peak[1]:.0f}">'
            f'<circle cx="{px:.2f}" cy="{py:.2f}" r="5"/>'
            f'<text x="{px + dx:.2f}" y="{py + 4:.2f}" text-anchor="{anchor}">peak {esc(fmt_bytes(peak[1]))}</text></g>'
        )
    legend_x = LEFT_PX
    for s in series:
        body.append(
            f'<g class="legend"><line class="series {s.key}" x1="{legend_x}" y1="{top + plot_h + 32}" '
            f'x2="{legend_x + 18}" y2="{top + plot_h + 32}"/>'
            f'<text x="{legend_x + 22}" y="{top + plot_h + 36}">{esc(s.label)}</text></g>'
        )
        legend_x += 30 + 7 * len(s.label)
    return _svg(kind, top + plot_h + 44, body, kind.replace("-", " "))


def host_memory_svg(run: Run) -> str | None:
    mem = run.memory
    if mem is None or not mem.host.get("t_s"):
        return None
    t = mem.host["t_s"]
    series = [Series("host-rss", "resident (RSS)", t, mem.host.get("rss_bytes", []))]
    if mem.host.get("file_rss_bytes"):
        series.append(
            Series(
                "host-file",
                "file-backed resident (mmapped weights, libraries)",
                t,
                mem.host["file_rss_bytes"],
            )
        )
    peak = (mem.peak_rss_t_s, mem.peak_rss_bytes) if mem.peak_rss_t_s is not None else None
    return memory_svg(run, series, peak, "memory-host")


def device_memory_svg(run: Run) -> str | None:
    mem = run.memory
    dev = mem.device if mem is not None else None
    if not dev or not dev.get("t_s"):
        return None
    t = dev["t_s"]
    labels = {"allocated_bytes": "allocated (torch)", "reserved_bytes": "reserved (torch allocator)",
              "nvml_used_bytes": "used (NVML, whole device)"}  # fmt: skip
    series = [
        Series("device-" + k.split("_")[0], label, t, dev[k]) for k, label in labels.items() if dev.get(k)
    ]
    peak = None
    if dev.get("allocated_bytes"):
        i = max(range(len(dev["allocated_bytes"])), key=lambda j: dev["allocated_bytes"][j])
        peak = (t[i], dev["allocated_bytes"][i])
    return memory_svg(run, series, peak, "memory-device")


# --- per-token latency -----------------------------------------------------------------


def latency_svg(gen: Generation) -> str | None:
    """Decode step latencies in order, with the p50/p90/p99 lines across."""
    lat = gen.decode_step_latencies_s
    if not lat:
        return None
    top, plot_h = 12, 200
    x = Axis(1, max(len(lat), 2), LEFT_PX, WIDTH_PX - RIGHT_PX - 40)
    vmax = max(max(lat), *gen.itl_percentiles_s.values()) if gen.itl_percentiles_s else max(lat)
    y = Axis(0.0, vmax * 1.1 or 1e-3, top + plot_h, top)
    body = []
    for v in nice_ticks(0, vmax * 1.1 or 1e-3, 5):
        py = y(v)
        body.append(f'<line class="grid" x1="{LEFT_PX}" y1="{py:.1f}" x2="{x.px_hi}" y2="{py:.1f}"/>')
        body.append(
            f'<text class="tick" x="{LEFT_PX - 6}" y="{py + 4:.1f}" text-anchor="end">{esc(fmt_s(v) if v else "0")}</text>'
        )
    for step in nice_ticks(1, len(lat), 8):
        if float(step).is_integer():
            body.append(
                f'<text class="tick" x="{x(step):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{int(step)}</text>'
            )
    body.append(
        f'<text class="tick" x="{(x.px_lo + x.px_hi) / 2:.0f}" y="{top + plot_h + 30}" text-anchor="middle">decode step</text>'
    )
    for name, v in gen.itl_percentiles_s.items():
        py = y(v)
        body.append(
            f'<g class="percentile" data-name="{esc(name)}" data-seconds="{v:.6g}">'
            f'<line x1="{LEFT_PX}" y1="{py:.2f}" x2="{x.px_hi}" y2="{py:.2f}"/>'
            f'<text x="{x.px_hi + 4}" y="{py + 4:.2f}">{esc(name)}</text></g>'
        )
    pts = " ".join(f"{x(i + 1):.2f},{y(v):.2f}" for i, v in enumerate(lat))
    body.append(f'<polyline class="series latency" data-points="{len(lat)}" points="{pts}"/>')
    for i, v in enumerate(lat):
        body.append(
            f'<circle class="dot" cx="{x(i + 1):.2f}" cy="{y(v):.2f}" r="2.5"><title>step {i + 1}: {esc(fmt_s(v))}</title></circle>'
        )
    return _svg("latency", top + plot_h + 40, body, "per-token latency", points=len(lat))


# --- memory by kind beside its expectation ---------------------------------------------


def memory_kind_svg(rows: Sequence[tuple[str, str, int, int | None]]) -> str | None:
    """Horizontal bars: each kind measured, and where the model's shape predicts it, expected."""
    rows = [r for r in rows if r[2] > 0 or r[3]]
    if not rows:
        return None
    bar_h, gap = 9, 8
    top = 6
    vmax = max(max(r[2], r[3] or 0) for r in rows) or 1
    x = Axis(0.0, vmax, LEFT_PX + 120, WIDTH_PX - RIGHT_PX - 90)
    body = []
    for i, (where, kind, measured, expected) in enumerate(rows):
        y = top + i * (2 * bar_h + gap)
        body.append(
            f'<text class="rowlabel" x="{x.px_lo - 8}" y="{y + bar_h + 4}" text-anchor="end">{esc(where)}: {esc(kind.replace("_", " "))}</text>'
        )
        body.append(
            f'<rect class="measured" data-kind="{esc(kind)}" x="{x.px_lo}" y="{y}" width="{max(x(measured) - x.px_lo, 0.5):.2f}" height="{bar_h}">'
            f"<title>measured {esc(fmt_bytes(measured))}</title></rect>"
            f'<text class="tick" x="{x(measured) + 4:.1f}" y="{y + bar_h - 1}">{esc(fmt_bytes(measured))}</text>'
        )
        if expected:
            body.append(
                f'<rect class="expected" data-kind="{esc(kind)}" x="{x.px_lo}" y="{y + bar_h}" width="{max(x(expected) - x.px_lo, 0.5):.2f}" height="{bar_h}">'
                f"<title>expected {esc(fmt_bytes(expected))}</title></rect>"
                f'<text class="tick" x="{x(expected) + 4:.1f}" y="{y + 2 * bar_h - 1}">expected {esc(fmt_bytes(expected))}</text>'
            )
    height = top + len(rows) * (2 * bar_h + gap) + 4
    return _svg("memory-kind", height, body, "memory by kind, measured and expected")
