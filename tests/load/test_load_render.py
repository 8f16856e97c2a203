"""Renderers of a load run on a fixed, hand-built run: the terminal summary against a golden
file (fixed width, no colour), the JSON and the HTML report.

Regenerate after an intended change with: LMPROF_UPDATE_GOLDEN=1 pytest tests/load/test_load_render.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from rich.console import Console

from lmprof.analyze.load import summarize
from lmprof.record.load import MetricsSample
from lmprof.render.load_html import render_load_html
from lmprof.render.load_json import render_load_json
from lmprof.render.load_terminal import render_load_run

GOLDEN = Path(__file__).parent / "golden" / "load_summary.txt"


def fixed_run(hand_run):
    run = hand_run(slo={"ttft": 0.25})
    run.server = {"base_url": "http://127.0.0.1:8000", "endpoint": "/v1/completions", "model": "m",
                  "version": "0.9.1", "server_header": "uvicorn"}  # fmt: skip
    run.settings.update(stream=True, input_tokens=10, output_tokens=5, prefix_tokens=0, repeat_share=0.0)
    run.wall_s = 2.5
    run.metrics = [
        MetricsSample(0.0, {"vllm:num_requests_running": 0.0, "vllm:prefix_cache_queries_total": 0.0,
                            "vllm:prefix_cache_hits_total": 0.0}),
        MetricsSample(1.0, {"vllm:num_requests_running": 2.0}),
        MetricsSample(2.5, {"vllm:num_requests_running": 0.0, "vllm:prefix_cache_queries_total": 40.0,
                            "vllm:prefix_cache_hits_total": 10.0}),
    ]  # fmt: skip
    return run


def render_text(run) -> str:
    console = Console(width=160, color_system=None, record=True, file=open(os.devnull, "w"))
    console.print(render_load_run(run, summarize(run), "runs/load-a"))
    return console.export_text()


def test_terminal_summary_matches_golden(hand_run):
    text = render_text(fixed_run(hand_run))
    if os.environ.get("LMPROF_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_terminal_summary_names_the_drawn_length_ranges(hand_run):
    run = fixed_run(hand_run)
    run.settings.update(input_tokens=64, output_tokens=32, range_ratio=0.75)
    assert "prompts: 16-112 words in, 8-56 tokens out (range ratio 0.75)" in render_text(run)


def test_json_has_every_level_figure(hand_run):
    data = json.loads(render_load_json(fixed_run(hand_run), summarize(fixed_run(hand_run))))
    level = data["levels"][0]
    assert level["completed"] == 3 and level["errors"]["http_503"]["count"] == 1
    assert level["latency_s"]["ttft"]["p50"] == 0.2 and level["goodput"]["share"] == 0.5
    assert level["server"]["prefix_cache_hit_rate"] == 0.25


def test_html_report_is_self_contained(hand_run):
    run = fixed_run(hand_run)
    run.server["model"] = "<script>alert(1)</script>"
    page = render_load_html(run)
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=\"https?://", page)  # nothing fetched
    for chart in ("request-timeline", "throughput-time", "server-gauges", "cdf-ttft", "cdf-itl"):
        assert f"chart {chart}" in page, chart
    # One row per measured request on the timeline: 4 (the warm-up one is not drawn).
    assert page.count('class="request"') == 4
