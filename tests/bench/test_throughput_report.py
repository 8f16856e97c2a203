"""The throughput report from a hand-built record: figures come from each point's load run,
gains are paired by round with their spread, the targets say met or missed by the measured
figure, and the terminal, JSON and HTML renderings show them (fixed input, no model)."""

from __future__ import annotations

import json

import pytest

from lmprof.analyze.throughput import summarize_throughput
from lmprof.record.load import LevelRecord, LoadRun, MetricsSample, RequestRecord
from lmprof.record.throughput import BenchPoint, BenchRow, ThroughputReport, load_throughput_report
from lmprof.render.throughput_html import render_throughput_html
from lmprof.render.throughput_json import throughput_dict
from lmprof.render.throughput_terminal import render_throughput

ROWS = [
    BenchRow("sequential @ no-sharing", "sequential", "no-sharing"),
    BenchRow("static-batch @ no-sharing", "static-batch", "no-sharing"),
    BenchRow("continuous @ no-sharing", "continuous", "no-sharing"),
    BenchRow("continuous @ shared-prefix", "continuous", "shared-prefix"),
    BenchRow("continuous+prefix-cache @ shared-prefix", "continuous", "shared-prefix", prefix_cache=True),
    BenchRow("continuous+response-cache @ repeats", "continuous", "repeats", response_cache=True),
]


def request(i: int, sent: float, first: float, end: float, tokens: int, **kw) -> RequestRecord:
    """One measured request of a closed-loop level, 64 input tokens, its tokens counted by usage."""
    return RequestRecord(
        index=i, level=0, warmup=False, scheduled_s=sent, sent_s=sent, end_s=end, first_token_s=first,
        last_token_s=end, output_tokens=tokens, output_tokens_method="usage", input_tokens=64, **kw,
    )  # fmt: skip


def load_run(
    users: int, tokens_per_s: float, ttft_s: float, *, repeats: float = 0.0, prefix_hits: float = 0.0
):
    """A 10 s closed-loop level: `users` requests of 100 tokens, spread to `tokens_per_s`."""
    n = round(tokens_per_s * 10 / 100)
    reqs = []
    for i in range(n):
        sent = i * 10 / n
        repeat = i > 0 and i < n * repeats + 1
        end = sent + (0.002 if repeat else ttft_s + 0.99)
        first = sent + (0.001 if repeat else ttft_s)
        reqs.append(request(i, sent, first, end, 100, repeat_of=0 if repeat else None))
    metrics = [
        MetricsSample(-1.0, {"lmprof:prefix_cache_queries_total": 0, "lmprof:prefix_cache_hits_total": 0,
                             "lmprof:kv_cache_bytes": 0}),
        MetricsSample(5.0, {"lmprof:prefix_cache_queries_total": 500, "lmprof:prefix_cache_hits_total": 100,
                            "lmprof:kv_cache_bytes": 3 << 20}),
        MetricsSample(11.0, {"lmprof:prefix_cache_queries_total": 1000,
                             "lmprof:prefix_cache_hits_total": 1000 * prefix_hits, "lmprof:kv_cache_bytes": 0}),
    ]  # fmt: skip
    level = LevelRecord(index=0, mode="closed", concurrency=users, start_s=0.0, end_s=10.0)
    run = LoadRun(run_id="x", created_at="2026-12-07T00:00:00+00:00", lmprof_version="0", levels=[level],
                  requests=reqs, metrics=metrics)  # fmt: skip
    return run.to_dict()


def point(row: str, round_k: int, users: int, tps: float, ttft: float, **kw) -> BenchPoint:
    return BenchPoint(row=row, round=round_k, concurrency=users, load=load_run(users, tps, ttft, **kw),
                      server_rss_peak_bytes=(400 + users) << 20, other_cpu_share=0.05, load_avg_start=[0.5])  # fmt: skip


@pytest.fixture
def report() -> ThroughputReport:
    points = []
    for k, noise in ((1, 1.0), (2, 0.5)):  # round 2 ran on a machine twice as slow: ratios hold
        points += [
            point("sequential @ no-sharing", k, 8, 100 * noise, 2.0),
            point("static-batch @ no-sharing", k, 8, 300 * noise, 0.9),
            point("continuous @ no-sharing", k, 8, (500 if k == 1 else 220) * noise, 0.4),
            point("continuous @ shared-prefix", k, 1, 100 * noise, 0.8),
            point("continuous+prefix-cache @ shared-prefix", k, 1, 120 * noise, 0.2, prefix_hits=0.75),
            point("continuous+response-cache @ repeats", k, 1, 80 * noise, 0.3, repeats=0.5),
        ]
    return ThroughputReport(
        created_at="2026-12-07T08:00:00+00:00", lmprof_version="0", command=["lmprof", "bench", "throughput"],
        settings={"model_id": "m", "concurrency": [1, 8], "rounds": 2, "slo_s": {"ttft": 1.0},
                  "input_tokens": 64, "prefix_tokens": 256, "output_tokens": 100, "repeat_share": 0.5},
        machine={"cpu_model": "Test CPU", "logical_cores": 2, "load_avg_start": [0.5, 0.5, 0.5],
                 "load_avg_end": [0.6, 0.6, 0.6]},
        rows=ROWS, points=points, complete=True,
    )  # fmt: skip


def _cell(summary, name, users):
    return next(c for c in summary.cells if c.row.name == name and c.concurrency == users)


def test_gains_are_paired_by_round_with_their_spread(report):
    summary = summarize_throughput(report)
    gain = summary.gains[("continuous @ no-sharing", 8)].output_tps
    assert (gain.lo, gain.hi, gain.rounds) == pytest.approx((2.2, 5.0, 2))
    assert gain.median == pytest.approx(3.6)
    static = summary.gains[("static-batch @ no-sharing", 8)].output_tps
    assert (static.lo, static.hi) == pytest.approx((3.0, 3.0))  # the slow round changes no ratio
    prefix = summary.base_gains[("continuous+prefix-cache @ shared-prefix", 1)].output_tps
    assert prefix.median == pytest.approx(1.2)
    cell = _cell(summary, "continuous+prefix-cache @ shared-prefix", 1)
    assert cell.hit_rate == pytest.approx(0.75)
    assert cell.median("kv_bytes_max") == 3 << 20
    assert _cell(summary, "sequential @ no-sharing", 8).median("goodput_rps") == 0.0  # TTFT 2 s > 1 s


def test_targets_say_met_or_missed_by_the_measured_figure(report):
    targets = {t.name.split(",")[0] + t.goal: t for t in summarize_throughput(report).targets}
    assert [t.met for t in targets.values()] == [False, True, True, True]
    gain = next(t for t in targets.values() if "tok/s" in t.name)
    assert gain.measured.startswith("3.60x (rounds 2.20-5.00x)")
    hit = next(t for t in targets.values() if "response-cache" in t.name)
    assert "p50 2.0 ms" in hit.measured
    cut = next(t for t in targets.values() if "prefix-cache" in t.name)
    assert cut.measured.startswith("4.00x")


def test_the_report_renders_and_round_trips(report, tmp_path):
    report.save(tmp_path)
    again = load_throughput_report(tmp_path)
    summary = summarize_throughput(again)
    text = render_throughput(again, summary)
    lines = text.splitlines()
    assert "CPU Test CPU (2 logical)" in lines[1]
    row = next(line for line in lines if line.startswith("continuous @ no-sharing"))
    assert "3.60x (2.20-5.00)" in row and "408 MiB" in row
    assert "continuous batching, 8 users on no-sharing, output tok/s over sequential: 3.60x" in text
    assert "MISSED" in text and "mixed-lengths" not in text  # no row on it: no line on it
    data = json.loads(json.dumps(throughput_dict(again, summary)))
    assert data["cells"][0]["row"]["scheduler"] == "sequential"
    html = render_throughput_html(again, summary)
    for chart in ("throughput-latency-p50", "gain-hit-rate", "memory-concurrency"):
        assert f'class="chart {chart}"' in html
    assert "<script" not in html


def test_a_busy_machine_and_a_failed_level_are_warned(report):
    report.points[0].other_cpu_share = 0.6
    report.points[1].error = "the server stopped accepting connections"
    report.complete = False
    warnings = summarize_throughput(report).warnings
    assert any("1 of 11 points ran while other processes used over 25%" in w for w in warnings)
    assert any("not measured (round 1: the server stopped" in w for w in warnings)
    assert any("did not finish" in w for w in warnings)


@pytest.mark.parametrize("command", [["bench", "throughput", "--html", "--from"], ["show", "--html"]])
def test_a_saved_report_renders_again_without_torch(report, tmp_path, command):
    """`--from DIR` and `lmprof show DIR` render from the file alone, in a fresh interpreter that
    never imports torch."""
    import subprocess
    import sys

    report.save(tmp_path)
    check = (
        "import sys; from lmprof.cli.main import main; "
        f"code = main({[*command, str(tmp_path)]!r}); "
        "print('LOADED', sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'transformers')))); "
        "sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout and "continuous @ no-sharing" in proc.stdout
    assert (tmp_path / "report.html").exists()
    (tmp_path / "report.html").unlink()


# --- mixed lengths: the batching targets on each workload ------------------------------------

MIXED_ROWS = [
    BenchRow(f"{s} @ mixed-lengths", s, "mixed-lengths") for s in ("sequential", "static-batch", "continuous")
]


def mixed_run(lengths: list[int], ttft_s: float, ttft_p99_s: float) -> dict:
    """A 10 s closed-loop level at 8 users: one request per answer length, the last one slow to
    its first token (p99 TTFT)."""
    reqs = []
    for i, n in enumerate(lengths):
        sent = i * 10 / len(lengths)
        first = sent + (ttft_p99_s if i == len(lengths) - 1 else ttft_s)
        reqs.append(request(i, sent, first, first + 0.5, n, planned_output_tokens=n))
    level = LevelRecord(index=0, mode="closed", concurrency=8, start_s=0.0, end_s=10.0)
    return LoadRun(run_id="m", created_at="now", lmprof_version="0", levels=[level], requests=reqs).to_dict()


def test_the_batching_targets_are_judged_on_mixed_lengths_too(report):
    lengths = [8, 56, 20, 44, 32, 12, 50, 26] * 5  # 40 answers, 1,240 tokens over 10 s
    short = [8, 12, 20, 26] * 2  # 8 answers, 132 tokens: a mean of 16.5, not the 32 asked on average
    report.rows = ROWS + MIXED_ROWS
    report.settings.update(workloads=["no-sharing", "mixed-lengths", "shared-prefix", "repeats"],
                           mixed_range_ratio=0.75, input_tokens=64, output_tokens=32)  # fmt: skip
    for k in (1, 2):
        for name, answers, ttft, p99 in (("sequential", short, 2.0, 9.0), ("static-batch", lengths[:24], 0.5, 4.0),
                                          ("continuous", lengths, 0.3, 1.0)):  # fmt: skip
            report.points.append(
                BenchPoint(
                    row=f"{name} @ mixed-lengths", round=k, concurrency=8, load=mixed_run(answers, ttft, p99)
                )
            )
    summary = summarize_throughput(report)
    # Output tok/s counts the tokens each answer brought: 1,240 over 10 s, and the gain is
    # 1,240 / 132 tokens, not the 5x of the requests' count.
    assert _cell(summary, "continuous @ mixed-lengths", 8).median("output_tps") == pytest.approx(124.0)
    gain = summary.gains[("continuous @ mixed-lengths", 8)]
    assert gain.output_tps.median == pytest.approx(1240 / 132)
    assert gain.request_rps.median == pytest.approx(5.0)
    targets = [(t.name, t.measured, t.met) for t in summary.targets]
    assert [name for name, _, _ in targets[:4]] == [
        "continuous batching, 8 users on no-sharing, output tok/s over sequential",
        "continuous batching, 8 users on no-sharing, p99 TTFT below static batching's",
        "continuous batching, 8 users on mixed-lengths, output tok/s over sequential",
        "continuous batching, 8 users on mixed-lengths, p99 TTFT below static batching's",
    ]
    assert targets[2][1:] == ("9.39x (rounds 9.39-9.39x)", True)
    assert targets[3][1:] == ("727.0 ms vs 3195.0 ms", True) and len(targets) == 6  # p99s, interpolated
    text = render_throughput(report, summary)
    assert "continuous batching, 8 users on mixed-lengths, output tok/s over sequential: 9.39x" in text
    assert "(mixed-lengths: 16-112 in, 8-56 out, range ratio 0.75)" in text
    html = render_throughput_html(report, summary)
    assert 'class="chart throughput-latency-mixed-lengths-p99"' in html


def test_mixed_lengths_planned_but_not_measured_says_so(report):
    report.rows = ROWS + MIXED_ROWS
    mixed = [t for t in summarize_throughput(report).targets if "mixed-lengths" in t.name]
    assert [(t.measured, t.met) for t in mixed] == [("not measured", None)] * 2


def test_the_header_says_which_engine_switches_the_servers_ran(report):
    from lmprof.record.throughput import ServerLife

    line = "lmprof serve: http://127.0.0.1:1/v1 model=m engine=lmprof scheduler=sequential native={} huge_pages=on"
    report.servers = [ServerLife("a", 1, [], line.format("on")), ServerLife("b", 1, [], line.format("on"))]
    header = render_throughput(report, summarize_throughput(report)).splitlines()[0]
    assert "(lmprof engine, fp32, native step on, huge pages on)" in header
    report.servers.append(ServerLife("c", 2, [], line.format("off")))  # mixed: both are said
    assert "native step off/on" in render_throughput(report, summarize_throughput(report)).splitlines()[0]
