"""`lmprof bench throughput`'s plan: which rows each workload gets (full and --quick), and what
each row's load runs are asked (the mixed-lengths workload's range ratio reaches lmprof load).
No server is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmprof.bench.plan import (
    MIXED_LENGTHS,
    MIXED_RANGE_RATIO,
    SCHEDULERS,
    WORKLOADS,
    BenchOptions,
    plan_rows,
)
from lmprof.bench.throughput import level_options
from lmprof.cli.bench_cmd import options_from_args
from lmprof.cli.main import build_parser
from lmprof.load.prompts import PromptSource

URL = "http://127.0.0.1:9"


def bench_options(*args: str) -> BenchOptions:
    return options_from_args(build_parser().parse_args(["bench", "throughput", "tiny", *args]))


def names(opts: BenchOptions) -> list[str]:
    return [row.name for row in plan_rows(opts)]


def test_mixed_lengths_is_a_default_workload_with_every_scheduler():
    opts = bench_options()
    assert MIXED_LENGTHS in opts.workloads and list(opts.workloads) == list(WORKLOADS)
    rows = names(opts)
    assert [n for n in rows if n.endswith("@ mixed-lengths")] == [f"{s} @ mixed-lengths" for s in SCHEDULERS]
    assert [n for n in rows if n.endswith("@ no-sharing")] == [f"{s} @ no-sharing" for s in SCHEDULERS]


def test_workloads_mixed_lengths_alone():
    assert names(bench_options("--workloads", "mixed-lengths")) == [
        f"{s} @ mixed-lengths" for s in SCHEDULERS
    ]


def test_quick_keeps_mixed_lengths_and_leaves_out_async():
    assert names(bench_options("--quick")) == [
        "sequential @ no-sharing", "static-batch @ no-sharing", "continuous @ no-sharing",
        "sequential @ mixed-lengths", "static-batch @ mixed-lengths", "continuous @ mixed-lengths",
        "continuous @ shared-prefix", "continuous+prefix-cache @ shared-prefix",
        "continuous @ repeats", "continuous+response-cache @ repeats",
    ]  # fmt: skip


def test_the_range_ratio_reaches_lmprof_load_on_mixed_lengths_only():
    opts = bench_options("--concurrency", "1,8")
    rows = {row.name: row for row in plan_rows(opts)}
    mixed = level_options(opts, rows["continuous @ mixed-lengths"], URL, 8, "tok")
    assert (mixed.range_ratio, mixed.input_tokens, mixed.output_tokens) == (MIXED_RANGE_RATIO, 64, 32)
    asked = [PromptSource(mixed).get(i).output_tokens for i in range(mixed.requests or 0)]
    assert len(set(asked)) > 1 and all(8 <= n <= 56 for n in asked)
    for name in ("continuous @ no-sharing", "continuous @ shared-prefix", "continuous @ repeats"):
        assert level_options(opts, rows[name], URL, 8, "tok").range_ratio == 0.0, name


def test_every_scheduler_of_a_level_gets_the_same_lengths():
    opts = bench_options()
    rows = [row for row in plan_rows(opts) if row.workload == MIXED_LENGTHS]
    drawn = []
    for row in rows:
        load = level_options(opts, row, URL, 4, "tok")
        source = PromptSource(load)
        drawn.append([(p.text, p.output_tokens) for p in map(source.get, range(load.requests or 0))])
    assert all(d == drawn[0] for d in drawn)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], 2 * (256 + 64) + 56 + 64),  # the shared prompt's input, mixed-lengths' longest output
        (["--workloads", "no-sharing,mixed-lengths"], 512),  # the floor
        (["--input-tokens", "256", "--workloads", "no-sharing"], 2 * 256 + 32 + 64),
        (["--input-tokens", "256", "--workloads", "mixed-lengths"], 2 * 448 + 56 + 64),  # 256*1.75, 32*1.75
    ],
)
def test_the_continuous_pool_fits_the_longest_draw(args, expected):
    assert bench_options(*args).max_model_len == expected


def test_the_settings_record_the_range_ratio():
    settings = BenchOptions(model="tiny", out=Path("o")).to_settings()
    assert settings["mixed_range_ratio"] == MIXED_RANGE_RATIO and MIXED_LENGTHS in settings["workloads"]
