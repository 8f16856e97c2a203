"""Terminal views of `--deep`: what a decode step is made of, operators, modules, copies,
memory by kind, and what tracing cost. Takes a Run, returns rich renderables."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lmprof.record.run import Run
from lmprof.render.units import fmt_bytes, fmt_pct, fmt_s

PART_LABELS = {
    "attention": "attention",
    "mlp": "MLP",
    "norm": "norms",
    "embedding": "embedding",
    "lm_head": "lm_head",
    "other_in_model": "other ops in the model (rotary, residuals, masks)",
    "python_in_model": "Python between ops inside the model",
    "outside_model": "outside the model (sampling, logits processors, generate loop)",
}


def render_deep(run: Run, top: int = 12) -> RenderableType:
    deep = run.deep
    if deep is None:
        return Text("")
    parts: list[RenderableType] = []
    if "decode" in deep.step_breakdown:
        parts.append(step_table(deep.step_breakdown["decode"], "decode step"))
    for stage in ("decode", "prefill"):
        if deep.operators.get(stage):
            parts.append(operator_table(deep.operators[stage], stage, top))
    if deep.modules.get("decode"):
        parts.append(module_table(deep.modules["decode"], "decode", top))
    if deep.copies:
        parts.append(copy_table(deep.copies, top=6))
    if deep.memory_by_kind:
        parts.append(memory_kind_table(deep.memory_by_kind))
    if deep.python:
        from lmprof.render.python_table import render_python_table

        parts.append(render_python_table(deep.python, sort_by="self", limit=15))
    for name, cost in deep.overhead.items():
        if name == "lmprof":
            parts.append(own_work_line(cost))
            continue
        if "slowdown" in cost and "decode_slowdown" not in cost:
            parts.append(Text(f"Cost of watching: {name} slowed a calibration workload {cost['slowdown']:.2f}x "
                              f"(paired runs, median of {cost.get('repeats')}).", style="yellow"))  # fmt: skip
        if "decode_slowdown" in cost:
            parts.append(
                Text(
                    f"Cost of watching: {traced_pace(name, cost)}; "
                    + (
                        "the step's shares are scaled to the untraced step, the operator and module tables are "
                        "the traced call's, the generation figures the untraced one's."
                        if any("untraced" in b for b in deep.step_breakdown.values())
                        else "the tables above are from the traced call, the generation figures from the untraced one."
                    ),
                    style="yellow",
                )
            )
    return Group(*parts)


def step_table(breakdown: dict[str, Any], label: str) -> Table:
    """The step part by part. With the tracer's measured cost (records since issue 21) the
    shares describe the untraced step and the traced figures stand beside them; older records
    show the traced step alone."""
    n = breakdown["steps"]
    untraced = breakdown.get("untraced")
    if untraced is None:
        table = Table(
            title=f"One {label}, on average over {n} (traced)", title_justify="left", box=box.SIMPLE_HEAD
        )
        table.add_column("part")
        table.add_column("per step", justify="right")
        table.add_column("share", justify="right")
        wall = breakdown["wall_s"] or 1e-12
        for key, label_text in PART_LABELS.items():
            value = breakdown["parts_s"].get(key, 0.0)
            table.add_row(label_text, fmt_s(value / n), fmt_pct(value / wall))
        table.add_row(
            Text("total", style="bold"), fmt_s(wall / n), fmt_pct(sum(breakdown["parts_s"].values()) / wall)
        )
        return table
    table = Table(
        title=f"One {label}, untraced (estimated from {n} traced)", title_justify="left", box=box.SIMPLE_HEAD
    )
    table.add_column("part")
    table.add_column("untraced", justify="right")
    table.add_column("share", justify="right")
    table.add_column("traced", justify="right")
    step_s = untraced["step_s"] or 1e-12
    for key, label_text in PART_LABELS.items():
        value = untraced["per_step_s"].get(key, 0.0)
        table.add_row(
            label_text, fmt_s(value), fmt_pct(value / step_s), fmt_s(breakdown["per_step_s"].get(key))
        )
    table.add_row(Text("total", style="bold"), fmt_s(step_s), fmt_pct(1.0), fmt_s(breakdown["wall_s"] / n))
    table.caption = untraced_caption(untraced)
    return table


def untraced_caption(untraced: dict[str, Any]) -> str:
    return (
        f"Shares describe the untraced step ({fmt_s(untraced['step_s'])}, measured): the tracer's measured cost "
        f"({untraced['ops_per_step']:.0f} ops x {fmt_s(untraced['per_op_s'])} and {untraced['ranges_per_step']:.0f} "
        f"module ranges x {fmt_s(untraced['per_range_s'])} a step) is subtracted from the part it ran in, then the "
        f"parts are scaled by {untraced['scale']:.2f} to the untraced step."
    )


def traced_pace(name: str, cost: dict) -> str:
    """The traced call's decode and prefill against the untraced repeat's, in words that hold
    either way: a ratio under 1 (the traced call faster) is the machine's noise, and says so."""
    decode, prefill = cost.get("decode_slowdown", float("nan")), cost.get("prefill_slowdown", float("nan"))
    words = f"with {name} the traced call's decode took {decode:.2f}x and its prefill {prefill:.2f}x the untraced repeat's time"
    if decode < 1 or prefill < 1:
        words += " (under 1x: the machine's noise between the two calls was larger than the tracer's cost)"
    return words


def own_work_line(cost: dict[str, Any]) -> Text:
    """lmprof's own work on the trace, done after the measured window: not in the run's figures."""
    return Text(
        f"lmprof's own work, after the measured window (not in the figures above): trace export "
        f"{fmt_s(cost.get('export_s'))}, analysis {fmt_s(cost.get('analysis_s'))}, tracer calibration "
        f"{fmt_s(cost.get('calibrate_s'))}; the process's high-water mark afterwards "
        f"{fmt_bytes(cost.get('process_peak_rss_bytes'))}.",
        style="dim",
    )


def operator_table(rows: list[dict[str, Any]], stage: str, top: int) -> Table:
    has_device = any(r.get("self_device_s") for r in rows)
    table = Table(title=f"Operators in {stage} (traced)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("operator", "calls", "self cpu", "total cpu") + (("self device",) if has_device else ()):
        table.add_column(col, justify="left" if col == "operator" else "right", no_wrap=col == "operator")
    has_shapes = any(r.get("shapes") for r in rows)  # recorded with --deep-shapes only
    if has_shapes:
        table.add_column("top input shapes", overflow="fold")
    for r in rows[:top]:
        cells = [r["name"], str(r["calls"]), fmt_s(r["self_cpu_s"]), fmt_s(r["total_cpu_s"])]
        if has_device:
            cells.append(fmt_s(r.get("self_device_s")))
        if has_shapes:
            cells.append(r["shapes"][0] if r.get("shapes") else "")
        table.add_row(*cells)
    return table


def collapse_layers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """model.layers.7.mlp -> model.layers.*.mlp, summed: one row per kind of module."""
    merged: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"calls": 0, "total_s": 0.0, "self_s": 0.0, "device_s": 0.0}
    )
    for r in rows:
        key = re.sub(r"\.(\d+)(\.|$)", r".*\2", r["path"])
        m = merged[key]
        m["path"], m["type"] = key, r.get("type", "")
        for f in ("calls", "total_s", "self_s", "device_s"):
            m[f] += r.get(f, 0) or 0
    return sorted(merged.values(), key=lambda m: -m["total_s"])


def module_table(rows: list[dict[str, Any]], stage: str, top: int) -> Table:
    table = Table(
        title=f"Modules in {stage}, layers summed (traced)", title_justify="left", box=box.SIMPLE_HEAD
    )
    for col in ("module", "type", "calls", "total", "self"):
        table.add_column(col, justify="right" if col in ("calls", "total", "self") else "left", no_wrap=True)
    for r in collapse_layers(rows)[:top]:
        table.add_row(r["path"], r["type"], str(r["calls"]), fmt_s(r["total_s"]), fmt_s(r["self_s"]))
    return table


def copy_table(rows: list[dict[str, Any]], top: int) -> Table:
    table = Table(title="Copies and casts (traced)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("stage", "op", "where", "calls", "bytes", "cpu", "device"):
        table.add_column(col, justify="right" if col in ("calls", "bytes", "cpu", "device") else "left")
    for r in rows[:top]:
        table.add_row(
            r["stage"], r["op"], r["where"], str(r["calls"]), fmt_bytes(r["bytes"] or None), fmt_s(r["cpu_s"]),
            fmt_s(r["device_s"]) if r["device_s"] else "-",
        )  # fmt: skip
    return table


def memory_kind_table(by_kind: dict[str, Any]) -> Table:
    moment = next((by_kind[w].get("moment") for w in ("host", "device") if by_kind.get(w)), None)
    title = f"Memory by kind at the traced call's {moment or 'peak'}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("where")
    table.add_column("kind")
    table.add_column("measured", justify="right")
    table.add_column("share", justify="right")
    table.add_column("expected", justify="right")
    expected = by_kind.get("expected", {})
    expect_for = {"weights_mapped": None, "weights": "weights", "kv_cache": "kv_cache",
                  "activations_and_temporaries": "activations_estimate"}  # fmt: skip
    for where in ("host", "device"):
        part = by_kind.get(where)
        if not part:
            continue
        total = part["measured_bytes"] or 1
        for kind, n_bytes in part["parts"].items():
            key = expect_for.get(kind)
            table.add_row(where, kind.replace("_", " "), fmt_bytes(n_bytes), fmt_pct(n_bytes / total),
                          fmt_bytes(expected.get(key)) if key else "")  # fmt: skip
        table.add_row(
            where,
            Text(f"= {part['measured']}", style="bold"),
            fmt_bytes(part["measured_bytes"]),
            "100.0%",
            "",
        )
    device = by_kind.get("device") or {}
    if device.get("beyond_reserved_bytes") is not None:
        table.add_row("device", "beyond reserved (CUDA context, other processes)",
                      fmt_bytes(device["beyond_reserved_bytes"]), "", "")  # fmt: skip
    if by_kind.get("kv_growth_bytes_per_token") is not None:
        table.caption = (
            f"KV cache grew {fmt_bytes(by_kind['kv_growth_bytes_per_token'])} per token (measured from the cache "
            f"tensors; expected {fmt_bytes(expected.get('kv_bytes_per_token'))}). Activation expectation is a rough estimate."
        )
    return table
