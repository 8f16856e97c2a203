"""HTML tables for the report: the same figures as the terminal views (render/terminal.py,
render/deep_view.py), as <table> markup. Numeric cells carry their raw value in
`data-v` so the page's script can sort any table by clicking a header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmprof.analyze.phases import is_filler, phase_rows
from lmprof.record.run import Run
from lmprof.render.deep_view import PART_LABELS, collapse_layers
from lmprof.render.generation_facts import generation_facts
from lmprof.render.html_charts import esc
from lmprof.render.units import fmt_bytes, fmt_pct, fmt_s

Cell = tuple[str, float | None] | str  # (shown text, sort value) or plain text


def table_html(
    headers: Sequence[str], rows: Sequence[Sequence[Cell]], cls: str = "", caption: str = ""
) -> str:
    """A table; numeric columns (cells given as (text, value)) are right-aligned and sortable."""
    out = [f'<table class="{esc(cls)}">']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append(
        "<thead><tr>" + "".join(f'<th scope="col">{esc(h)}</th>' for h in headers) + "</tr></thead><tbody>"
    )
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple):
                text, value = cell
                v = "" if value is None else f"{value:.9g}"
                cells.append(f'<td class="num" data-v="{v}">{esc(text)}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _s(v: float | None) -> Cell:
    return (fmt_s(v), v)


def _b(v: float | None, signed: bool = False) -> Cell:
    return (fmt_bytes(v, signed=signed), v)


def _n(v: float | None) -> Cell:
    return ("-" if v is None else f"{v:,.0f}", v)


def _pct(v: float | None) -> Cell:
    return (fmt_pct(v), v)


def phase_table_html(run: Run) -> str:
    has_device = any(p.device_peak_allocated_bytes is not None for p in run.phases)
    headers = ["phase", "wall", "share", "self", "cpu", "rss peak", "+file pages", "moved", "GB/s"]
    headers += ["device peak"] if has_device else []
    rows = []
    for r in phase_rows(run):
        name = (
            "\u2003" * r.depth
            + r.name
            + (f" ×{r.count}" if r.count > 1 else "")
            + ("" if r.complete else " (cut short)")
            + (f": {', '.join(r.functions[:3])}" if r.functions else "")
        )
        row: list[Cell] = [
            name, _s(r.wall_s), _pct(r.share), _s(r.self_s),
            _s(r.cpu_s) if not is_filler(r.name) else ("-", None),
            _b(r.rss_peak_bytes), _b(r.file_rss_delta_bytes, signed=True) if r.file_rss_delta_bytes else ("-", None),
            _b(r.payload_bytes), (f"{r.payload_gbps:.2f}" if r.payload_gbps is not None else "-", r.payload_gbps),
        ]  # fmt: skip
        if has_device:
            row.append(_b(r.device_peak_allocated_bytes))
        rows.append(row)
    return table_html(headers, rows, cls="phases")


def generation_html(run: Run) -> str:
    g = run.generation
    if g is None:
        return "<p>No generation call was recorded.</p>"
    items = generation_facts(run, gap=" ", note_traced=True)
    return definition_list(items)


def definition_list(items: Sequence[tuple[str, str]], cls: str = "facts") -> str:
    return f'<dl class="{cls}">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def flat_items(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A nested dict as (dotted.key, value) pairs, for the system and environment lists."""
    if isinstance(data, dict):
        out: list[tuple[str, str]] = []
        for k, v in data.items():
            out += flat_items(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(data, list):
        if all(not isinstance(v, dict | list) for v in data):
            return [(prefix, ", ".join(str(v) for v in data) or "-")]
        out = []
        for i, v in enumerate(data):
            out += flat_items(v, f"{prefix}[{i}]")
        return out
    return [(prefix, "-" if data is None else str(data))]


def step_table_html(breakdown: dict[str, Any], label: str) -> str:
    n = breakdown.get("steps") or 1
    wall = breakdown.get("wall_s") or 1e-12
    parts = breakdown.get("parts_s", {})
    rows: list[list[Cell]] = [
        [text, _s(parts.get(key, 0.0) / n), _pct(parts.get(key, 0.0) / wall)]
        for key, text in PART_LABELS.items()
    ]
    rows.append(["total", _s(wall / n), _pct(sum(parts.values()) / wall)])
    return table_html(
        ["part", "per step", "share"],
        rows,
        cls="sortable steps",
        caption=f"One {label}, on average over {n} (traced)",
    )


def operator_table_html(rows: list[dict[str, Any]], stage: str, top: int = 40) -> str:
    has_device = any(r.get("self_device_s") for r in rows)
    has_shapes = any(r.get("shapes") for r in rows)  # recorded with --deep-shapes only
    headers = (
        ["operator", "calls", "self cpu", "total cpu"]
        + (["self device"] if has_device else [])
        + (["top input shapes"] if has_shapes else [])
    )
    body = []
    for r in rows[:top]:
        row: list[Cell] = [r["name"], _n(r["calls"]), _s(r["self_cpu_s"]), _s(r["total_cpu_s"])]
        if has_device:
            row.append(_s(r.get("self_device_s")))
        if has_shapes:
            row.append(r["shapes"][0] if r.get("shapes") else "")
        body.append(row)
    more = f" (top {top} of {len(rows)})" if len(rows) > top else ""
    return table_html(headers, body, cls="sortable operators", caption=f"Operators in {stage} (traced){more}")


def module_table_html(rows: list[dict[str, Any]], stage: str, top: int = 40) -> str:
    merged = collapse_layers(rows)
    body = [[r["path"], r["type"], _n(r["calls"]), _s(r["total_s"]), _s(r["self_s"])] for r in merged[:top]]
    return table_html(
        ["module", "type", "calls", "total", "self"], body, cls="sortable modules",
        caption=f"Modules in {stage}, layers summed (traced)",
    )  # fmt: skip


def copy_table_html(rows: list[dict[str, Any]], top: int = 20) -> str:
    body = [
        [r["stage"], r["op"], r["where"], _n(r["calls"]), _b(r["bytes"] or None), _s(r["cpu_s"]),
         _s(r["device_s"]) if r.get("device_s") else ("-", None)]
        for r in rows[:top]
    ]  # fmt: skip
    return table_html(
        ["stage", "op", "where", "calls", "bytes", "cpu", "device"],
        body,
        cls="sortable copies",
        caption="Copies and casts (traced)",
    )


EXPECTED_FOR = {"weights": "weights", "weights_in_torch_memory": "weights", "kv_cache": "kv_cache",
                "activations_and_temporaries": "activations_estimate"}  # fmt: skip


def memory_kind_rows(by_kind: dict[str, Any]) -> list[tuple[str, str, int, int | None]]:
    """(where, kind, measured bytes, expected bytes or None) for each part.

    Weights are either memory-mapped from the file or copied into torch memory; the
    expected weight bytes go beside whichever of the two holds them."""
    expected = by_kind.get("expected", {})
    out = []
    for where in ("host", "device"):
        part = by_kind.get(where)
        if not part:
            continue
        parts = part.get("parts", {})
        weights_kind = "weights_mapped" if parts.get("weights_mapped") else "weights_in_torch_memory"
        for kind, n_bytes in parts.items():
            key = "weights" if kind == weights_kind else EXPECTED_FOR.get(kind)
            if kind in ("weights_mapped", "weights_in_torch_memory") and kind != weights_kind:
                key = None
            out.append((where, kind, n_bytes, expected.get(key) if key else None))
    return out


def memory_kind_table_html(by_kind: dict[str, Any]) -> str:
    rows: list[list[Cell]] = []
    for where in ("host", "device"):
        part = by_kind.get(where)
        if not part:
            continue
        total = part.get("measured_bytes") or 1
        for w, kind, n_bytes, exp in memory_kind_rows(by_kind):
            if w == where:
                rows.append(
                    [
                        where,
                        kind.replace("_", " "),
                        _b(n_bytes),
                        _pct(n_bytes / total),
                        _b(exp) if exp is not None else ("", None),
                    ]
                )
        rows.append(
            [
                where,
                f"= {part.get('measured', 'measured')}",
                _b(part.get("measured_bytes")),
                _pct(1.0),
                ("", None),
            ]
        )
    caption = "Memory by kind at the traced call's peak, beside the analytical expectation"
    return table_html(
        ["where", "kind", "measured", "share", "expected"], rows, cls="memkind", caption=caption
    )
