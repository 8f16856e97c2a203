"""`lmprof bench throughput --json`: the derived figures (medians, gains with their spread,
targets, warnings). The full record, with every request, is OUT/throughput.json."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lmprof.analyze.throughput import ThroughputSummary
from lmprof.record.throughput import ThroughputReport
from lmprof.render.load_json import _finite

FIGURES = ("output_tps", "request_rps", "goodput_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
           "rss_peak_bytes", "kv_bytes_max", "prefix_hit_rate", "response_hit_rate")  # fmt: skip


def throughput_dict(report: ThroughputReport, summary: ThroughputSummary) -> dict[str, Any]:
    cells = []
    for cell in summary.cells:
        key = (cell.row.name, cell.concurrency)
        gain, base = summary.gains.get(key), summary.base_gains.get(key)
        cells.append({
            "row": dataclasses.asdict(cell.row), "concurrency": cell.concurrency,
            "rounds_measured": sorted(cell.rounds),
            "median": {name: cell.median(name) for name in FIGURES},
            "gain_vs_sequential": dataclasses.asdict(gain) if gain else None,
            "gain_vs_no_cache": dataclasses.asdict(base) if base else None,
            "errors": cell.errors,
        })  # fmt: skip
    return _finite({
        "kind": "throughput-summary", "created_at": report.created_at, "settings": report.settings,
        "machine": report.machine, "complete": report.complete, "wall_s": report.wall_s, "cells": cells,
        "targets": [dataclasses.asdict(t) for t in summary.targets], "warnings": summary.warnings,
    })  # fmt: skip


def render_throughput_json(report: ThroughputReport, summary: ThroughputSummary) -> str:
    return json.dumps(throughput_dict(report, summary), indent=1) + "\n"
