"""The Python function table: where Python time went, by function, with what measuring it cost.

Takes the `DeepProfile.python` dict and returns a rich Table; printing is the caller's.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from lmprof.analyze.python_functions import function_rows
from lmprof.render.units import fmt_pct, fmt_s


def render_python_table(python: dict[str, Any], sort_by: str = "self", limit: int | None = 30) -> Table:
    title = "Python functions (by calls)" if sort_by == "calls" else f"Python functions (by {sort_by} time)"
    if not python.get("available", True):
        # One line, not an empty table: the reason is the whole story.
        grid = Table.grid()
        grid.add_column()
        grid.add_row(f"{title}: {_caption(python)}")
        return grid
    table = Table(
        title=title,
        title_justify="left",
        caption=_caption(python),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # On a narrow terminal names and paths wrap (paths fold, keeping the line number) so
    # that no figure is ever cut.
    table.add_column("function", overflow="fold")
    table.add_column("file:line", overflow="fold")
    for figure in ("calls", "self", "total", "self %"):
        table.add_column(figure, justify="right", no_wrap=True)
    for row in function_rows(python, sort_by, limit):
        table.add_row(
            row["name"],
            _location(row),
            _calls(row),
            fmt_s(row["self_s"]),
            fmt_s(row["total_s"]),
            fmt_pct(row["self_share"]),
        )
    return table


def _caption(python: dict[str, Any]) -> str:
    sampler = python.get("sampler", "?")
    if not python.get("available", True):
        return f"no Python profile from {sampler}: {python.get('reason') or 'unknown reason'}"
    if sampler == "py-spy":
        frames = "Python + native frames" if python.get("native") else "Python frames"
        mode = "nonblocking" if python.get("nonblocking") else "blocking"
        parts = [f"py-spy at {python.get('rate_hz')} Hz", frames, mode]
        sampled = f"{fmt_s(python.get('total_s'))} sampled"
        if python.get("wall_s"):
            sampled += f" in {fmt_s(python['wall_s'])} wall (idle dropped)"
        parts.append(sampled)
    else:
        parts = ["cProfile (every call, main thread)", f"{fmt_s(python.get('total_s'))} profiled"]
    slowdown = python.get("slowdown")
    parts.append(f"measured slowdown {slowdown:.2f}x" if slowdown is not None else "slowdown not measured")
    lines = [" · ".join(parts)]
    if python.get("pstats_file"):
        lines.append(f"pstats: {python['pstats_file']}  (python -m pstats, snakeviz)")
    lines.extend(python.get("notes") or [])
    return "\n".join(lines)


def _location(row: dict[str, Any]) -> str:
    if row.get("file") is None:
        return "-"
    return f"{row['file']}:{row['line']}" if row.get("line") is not None else row["file"]


def _calls(row: dict[str, Any]) -> str:
    calls, primitive = row.get("calls"), row.get("primitive_calls")
    if calls is None:
        return "-"
    # pstats' convention: total/primitive when recursion made them differ
    return f"{calls}/{primitive}" if primitive is not None and primitive != calls else str(calls)
