"""`lmprof ablate`: the figures on hand-built numbers, the row plan, the best combination, the
table, and a small real ablation of the tiny preset end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from helpers.runs_for_tests import phase, sample_run
from rich.console import Console

from lmprof.ablation.plan import AblationRow, best_combination, measured_best, plan_rows, select_rows
from lmprof.analyze.ablation import (
    common_prefix_tokens,
    faster_alone,
    floor_share,
    floor_step_s,
    paired_speedup,
    round_figures,
    summarize_rows,
    token_agreement,
)
from lmprof.cli.report_console import report_console
from lmprof.collect.hardware_probes import sizes_for_device
from lmprof.collect.probe_cache import cache_path, machine_key, save_probes
from lmprof.errors import UsageError
from lmprof.record.ablation import BEST, AblationReport, RoundFigures, RowResult, load_report, save_report
from lmprof.record.probes import MIB, HardwareProbes, ProbeResult
from lmprof.record.run import load_run, validate_run_dict
from lmprof.render.ablation_table import render_ablation

# --- the arithmetic ----------------------------------------------------------------------------


def test_paired_speedup_is_the_median_of_per_round_ratios():
    # Round 2 was slow for both rows (a busy machine): the within-round ratio stays 2.
    assert paired_speedup([20.0, 10.0, 22.0], [10.0, 5.0, 10.0]) == pytest.approx(2.0)
    assert paired_speedup([20.0, None], [10.0, 4.0]) == pytest.approx(2.0)  # missing rounds left out
    assert paired_speedup([None], [10.0]) is None


def test_floor_and_share():
    # 538 MB of weights at 20 GB/s: a step cannot take less than 26.9 ms.
    floor = floor_step_s(538_000_000, 20e9)
    assert floor == pytest.approx(0.0269)
    assert floor_share(floor, 0.0538) == pytest.approx(0.5)  # twice the floor: half of it reached
    assert (
        floor_step_s(None, 20e9) is None
        and floor_share(None, 0.05) is None
        and floor_share(0.02, None) is None
    )


def test_token_agreement_and_common_prefix():
    assert token_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == pytest.approx(0.75)
    assert token_agreement([1, 2], [1, 2, 3, 4]) == pytest.approx(0.5)  # over the longer sequence
    assert token_agreement([], []) is None
    assert common_prefix_tokens([1, 2, 3, 4], [1, 2, 9, 4]) == 2


def rf(rate, ttft=0.1, peak=100, tokens=(1, 2, 3, 4)):
    return RoundFigures(ttft, rate, 1.0 / rate if rate else None, peak, list(tokens))


def test_summarize_rows_against_baseline_previous_floor_and_reference():
    rows = [
        RowResult(
            "transformers", "transformers fp32", "ran", rounds=[rf(10.0), rf(5.0)], decode_weight_bytes=400
        ),
        RowResult("engine", "engine fp32", "ran", rounds=[rf(20.0), rf(10.0)], decode_weight_bytes=400),
        RowResult("int4", "int4 weights", "skipped", "no int4 path"),
        RowResult(
            "int8",
            "int8",
            "ran",
            rounds=[rf(60.0, tokens=(1, 2, 7, 4)), rf(20.0, peak=300)],
            decode_weight_bytes=100,
        ),  # fmt: skip
    ]
    figures = {f.name: f for f in summarize_rows(rows, "transformers", "engine", read_bytes_per_s=1000.0)}
    assert figures["transformers"].speedup_vs_baseline == 1.0
    assert figures["engine"].speedup_vs_baseline == pytest.approx(2.0)
    assert figures["engine"].decode_tokens_per_s == pytest.approx(15.0)  # median over rounds
    assert figures["int4"].rounds_run == 0 and figures["int4"].decode_tokens_per_s is None
    # The row before int8 that ran is the engine (the skipped int4 is passed over).
    assert figures["int8"].speedup_vs_previous == pytest.approx(2.5)  # median of 3.0 and 2.0
    assert figures["int8"].speedup_vs_baseline == pytest.approx(5.0)  # median of 6 and 4
    assert figures["int8"].peak_memory_bytes == 300
    # Floor: 100 bytes at 1000 B/s = 0.1 s; measured step: median of 1/60 and 1/20 s.
    assert figures["int8"].floor_s == pytest.approx(0.1)
    assert figures["int8"].floor_share == pytest.approx(0.1 / ((1 / 60 + 1 / 20) / 2))
    assert figures["int8"].agreement == pytest.approx(0.75)
    assert figures["int8"].agreement_prefix_tokens == 2
    assert figures["engine"].agreement == 1.0
    assert figures["int8"].forced_agreement is None  # no agreement_check in these rounds


def test_round_figures_read_the_run():
    run = sample_run()
    run.phases[9].detail["new_token_ids"] = [5, 6, 7, 8]
    run.phases.append(phase("agreement_check", 4.2, 4.3, detail={"teacher_forced_agreement": 0.75}))
    figures = round_figures(run)
    assert figures.decode_tokens_per_s == pytest.approx(run.generation.decode_tokens_per_s)
    assert figures.ttft_s == pytest.approx(0.51) and figures.step_s == pytest.approx(run.generation.tpot_s)
    assert figures.peak_memory_bytes == 110 * MIB  # during the measured generate call
    assert figures.file_backed_bytes == 10 * MIB
    assert figures.new_token_ids == [5, 6, 7, 8] and figures.forced_agreement == 0.75


# --- the plan ----------------------------------------------------------------------------------


def test_plan_keeps_unrunnable_rows_with_a_reason():
    rows = {r.name: r for r in plan_rows(threads=2, logical_cores=2, prompt_tokens=32,
                                         unrunnable_dtypes={"float16": "no fp16 kernels"})}  # fmt: skip
    assert rows["compile"].skip_reason.startswith("off by default")
    assert rows["fp16"].skip_reason == "no fp16 kernels" and rows["bf16"].skip_reason is None
    assert rows["int4"].skip_reason and rows["threads"].options == {"threads": 1}
    assert rows["chunked-prefill"].options == {"prefill_chunk_size": 8}
    assert rows["batch-8"].batch == 8
    assert rows["w8a8"].options == {"int8": True, "native_decode": True, "int8_activations": True}
    assert rows["w8a8"].skip_reason is None
    no_native = {r.name: r for r in plan_rows(threads=2, logical_cores=2, prompt_tokens=32,
                                              native_unavailable="no compiler", w8a8_unavailable="no AVX2")}  # fmt: skip
    assert no_native["native"].skip_reason == no_native["w8a8"].skip_reason == "no compiler"
    no_vnni = {
        r.name: r for r in plan_rows(threads=2, logical_cores=2, prompt_tokens=32, w8a8_unavailable="no AVX2")
    }
    assert no_vnni["w8a8"].skip_reason == "no AVX2" and no_vnni["native"].skip_reason is None
    with_compile = {
        r.name: r for r in plan_rows(threads=1, logical_cores=1, prompt_tokens=32, compile_decode=True)
    }
    assert with_compile["compile"].skip_reason is None
    assert with_compile["threads"].skip_reason  # one core: nothing else to try
    for row in rows.values():  # every switch set is a valid engine configuration
        row.engine_options(2)


def test_select_rows():
    rows = plan_rows(threads=2, logical_cores=2, prompt_tokens=32)
    assert [r.name for r in select_rows(rows, ["int8", "engine"])] == ["engine", "int8"]  # plan order
    with pytest.raises(UsageError, match="nope"):
        select_rows(rows, ["nope"])


def test_best_combination_merges_winners_and_drops_conflicts():
    rows = plan_rows(threads=2, logical_cores=2, prompt_tokens=32, compile_decode=True)
    rates = {"engine": 10.0, "int8": 30.0, "column-major": 14.0, "fused": 12.0, "bf16": 11.0, "fp16": 13.0,
             "kv-off": 2.0, "batch-8": 80.0, "threads": 10.4, "compile": 11.5, "kv-growing": 11.0}  # fmt: skip
    best = best_combination(rows, rates)
    # int8 is the fastest weight format, so fp16, bf16 and column-major (other formats) stay out;
    # compile needs the static cache, so the growing cache is dropped; batch is another workload;
    # 1 thread (4% faster) is within the noise margin (10%).
    assert best.combines == ["int8", "fused", "compile"]
    assert best.options == {"int8": True, "fuse_qkv": True, "fuse_gate_up": True, "compile_decode": True}
    best.engine_options(2)
    # The fastest switch alone (fp16) does not combine with the native step or int8, whose
    # speed-ups together are larger: every allowed set is scored, not the fastest first.
    rows = plan_rows(threads=2, logical_cores=2, prompt_tokens=32)
    mixed = best_combination(rows, {"engine": 10.0, "fp16": 28.0, "native": 25.0, "int8": 20.0})
    assert mixed.combines == ["native", "int8"]
    assert mixed.options == {"native_decode": True, "int8": True}
    # W8A8 carries int8 weights and the native step: it combines with neither row, but with huge
    # pages (6 x 1.15 beats native x int8 x huge pages, 2.5 x 2 x 1.15).
    w8a8 = best_combination(
        rows, {"engine": 10.0, "native": 25.0, "int8": 20.0, "w8a8": 60.0, "huge-pages": 11.5}
    )
    assert w8a8.combines == ["w8a8", "huge-pages"]
    assert w8a8.options == {"int8": True, "native_decode": True, "int8_activations": True, "huge_pages": True}
    none = best_combination(rows, {"engine": 10.0, "int8": 9.0, "fused": 10.4})
    assert none.skip_reason == "no switch beat the engine row by 10%"


def test_a_row_that_ran_faster_alone_replaces_the_estimated_best():
    # Seen on a Zen 5: int8 (torch ops) x native multiplied to 10.5x, above W8A8's measured 10.0x,
    # and then ran 176.8 tok/s against W8A8's 208.9.
    rows = plan_rows(threads=2, logical_cores=2, prompt_tokens=32)
    rates = {"engine": 20.9, "native": 62.6, "int8": 72.9, "w8a8": 208.9}
    best = best_combination(rows, rates)
    assert best.combines == ["int8", "native"]
    swap = measured_best(best, rows, rates, best_rate=176.8)
    assert swap is not None
    row, why = swap
    assert row.name == BEST and row.combines == ["w8a8"]
    assert row.options == {"int8": True, "native_decode": True, "int8_activations": True}
    assert "176.8" in why and "w8a8" in why
    assert measured_best(best, rows, rates, best_rate=230.0) is None  # the set won: kept
    one = best_combination(rows, {"engine": 10.0, "native": 25.0})
    assert (
        measured_best(one, rows, {"engine": 10.0, "native": 25.0}, best_rate=20.0) is None
    )  # nothing estimated


def test_row_round_trips_through_a_job_file():
    row = AblationRow("best", "best combination", "engine", {"int8": True}, combines=["int8"])
    assert AblationRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row


# --- the table ---------------------------------------------------------------------------------


def report_of(rows: list[RowResult], rounds: int) -> AblationReport:
    """A report of hand-built rows: transformers the baseline, engine the reference, 20 GB/s read."""
    return AblationReport(
        created_at="2026-11-25T00:00:00+00:00", model="tiny", model_path="/m", threads=2,
        request={"rounds": rounds, "prompt_tokens": 32, "max_new_tokens": 4, "warmup_tokens": 4, "out": "OUT"},
        prompt_source="tokenized prose", read_bandwidth_gbps=20.0, probes={"threads": 2, "cache_file": "c.json"},
        load_avg_start=[0.5, 0, 0], load_avg_end=[0.7, 0, 0], rows=rows,
        figures=summarize_rows(rows, "transformers", "engine", 1000.0), system={"cpu": {"logical_cores": 2}},
    )  # fmt: skip


def test_table_shows_figures_and_what_was_not_measured():
    rows = [
        RowResult(
            "transformers",
            "transformers fp32",
            "ran",
            rounds=[replace(rf(10.0), other_cpu_share=0.4)],
            decode_weight_bytes=400,
        ),  # fmt: skip
        RowResult("engine", "engine fp32", "ran", rounds=[rf(20.0)], decode_weight_bytes=400),
        RowResult("bf16", "bf16 weights", "ran", rounds=[replace(rf(40.0), forced_agreement=0.625)]),
        RowResult("int4", "int4 weights", "skipped", "the engine has no int4 path"),
        RowResult("int8", "int8 weight-only", "failed", "RuntimeError: boom"),
    ]
    report = report_of(rows, rounds=1)
    report = AblationReport.from_dict(json.loads(json.dumps(report.to_dict())))  # as read from ablation.json
    console = Console(width=100, record=True, color_system=None)
    console.print(render_ablation(report))
    text = console.export_text()
    assert "engine fp32" in text and "2.00×" in text and "20.0" in text
    assert "int4 weights: skipped, the engine has no int4 path" in text
    assert "int8 weight-only: failed, RuntimeError: boom" in text
    assert "20.0 GB/s" in text and "busy" not in text
    assert "62%" in text  # the teacher-forced agreement, where a row has one
    assert "Busy rounds (other processes took over a quarter of the CPUs): transformers (round 1)." in text
    assert "Only 1 round:" in text and "--rounds 3 or more" in text  # one round is a rough figure
    report.request["rounds"] = 3
    console = Console(width=100, record=True, color_system=None)
    console.print(render_ablation(report))
    assert "Only" not in console.export_text()


def test_a_saved_report_renders_without_torch_or_the_runner(tmp_path):
    # Rendering OUT/ablation.json again reads the record only: not torch, not the runner (which
    # would bring the session and every collector).
    rows = [
        RowResult("transformers", "transformers fp32", "ran", rounds=[rf(10.0)], decode_weight_bytes=400),
        RowResult("engine", "engine fp32", "ran", rounds=[rf(20.0)], decode_weight_bytes=400),
    ]
    save_report(tmp_path, report_of(rows, rounds=3))
    code = (
        "import sys; from pathlib import Path; from rich.console import Console;"
        "from lmprof.record.ablation import load_report;"
        "from lmprof.render.ablation_table import render_ablation;"
        "Console(width=100, color_system=None).print(render_ablation(load_report(Path(sys.argv[1]))));"
        "loaded = [m for m in ('torch', 'lmprof.ablation.runner', 'lmprof.session') if m in sys.modules];"
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "engine fp32" in result.stdout and "2.00×" in result.stdout


def test_a_switch_that_outran_the_best_combination_is_said():  # from every round's rates
    def row(name: str, rates: list[float]) -> RowResult:
        return RowResult(name, name, "ran", rounds=[rf(rate) for rate in rates], decode_weight_bytes=400)

    base = [row("transformers", [28.3, 29.6, 29.9]), row("engine", [31.8, 33.3, 33.5])]
    switches = [row("w8a8", [197.2, 244.7, 273.5]), row("huge-pages", [36.3, 34.8, 35.3])]
    slower = row(BEST, [265.9, 215.4, 176.2])  # round 1 chose it; rounds 2 and 3 ran w8a8 alone faster

    def notes(best: RowResult) -> str:
        report = report_of([*base, *switches, best], rounds=3)
        report.best_combines = ["w8a8", "huge-pages"]
        console = Console(width=200, record=True, color_system=None)
        console.print(render_ablation(report))
        return " ".join(console.export_text().split())  # the notes wrap

    assert "the w8a8 row alone ran 1.14× the best combination" in notes(slower)
    assert "adding huge-pages bought nothing measurable" in notes(slower)
    assert "alone ran" not in notes(row(BEST, [265.9, 260.0, 280.0]))
    assert "alone ran" not in notes(row(BEST, [265.9, 235.0, 260.0]))  # 1.04×: within the 10% of noise


def test_faster_alone_skips_what_cannot_be_compared():
    switch = RowResult("w8a8", "w8a8", "ran", rounds=[rf(250.0), rf(250.0)])
    best = RowResult(BEST, "best", "ran", rounds=[rf(200.0), rf(200.0)])
    assert faster_alone([switch, best], BEST, ["w8a8", "huge-pages"], 1.1) == ("w8a8", 1.25)
    assert faster_alone([switch, best], BEST, ["w8a8"], 1.1) is None  # the best is that one switch
    assert faster_alone([switch, replace(best, status="failed")], BEST, ["w8a8", "huge-pages"], 1.1) is None
    no_rounds = RowResult("w8a8", "w8a8", "ran", rounds=[None, None])
    assert faster_alone([no_rounds, best], BEST, ["w8a8", "huge-pages"], 1.1) is None


def test_the_table_printed_to_a_file_keeps_every_figure(no_terminal, capsys):
    # Off a terminal rich draws 80 columns and cuts no-wrap cells to "…"; the CLI's console must not.
    label = "int8 weights + activations (native)"
    rows = [
        RowResult("transformers", "transformers fp32", "ran", rounds=[rf(29.6)], decode_weight_bytes=400),
        RowResult("engine", "engine fp32", "ran", rounds=[rf(33.3)], decode_weight_bytes=400),
        RowResult("w8a8", label, "ran", rounds=[replace(rf(245.25), forced_agreement=0.984)]),
    ]
    rendered = render_ablation(report_of(rows, rounds=3))
    at_80 = Console(file=io.StringIO(), width=80, color_system=None)
    at_80.print(rendered)
    assert "…" in at_80.file.getvalue()  # rich's 80 columns would cut this table
    report_console(rendered).print(rendered)
    out = capsys.readouterr().out
    assert "…" not in out
    row = next(line for line in out.splitlines() if line.startswith(label))
    assert "245" in row and "8.29×" in row and "7.36×" in row and "98%" in row


# --- end to end --------------------------------------------------------------------------------


def seed_probe_cache(cache_root, threads: int) -> None:
    """A cache entry at the sizes this machine probes, so the ablation does not spend ~10 s probing."""
    probes = HardwareProbes(
        measured_at="2026-11-25T00:00:00+00:00", threads=threads, torch_version="x",
        sizes={"cpu": asdict(sizes_for_device("cpu"))}, load_avg_start=[0, 0, 0], load_avg_end=[0, 0, 0], wall_s=1.0,
        probes=[ProbeResult("read", "read", "cpu", "float32", [1], 20 * 10**9, 0, [1.0])],
    )  # fmt: skip
    key = machine_key(threads, ["cpu"])
    save_probes(cache_path(key, cache_root), key, probes)


def test_ablate_tiny_writes_one_run_per_row(run_cli, lmprof_cache, tiny_model, tmp_path):
    seed_probe_cache(lmprof_cache, threads=1)
    out = tmp_path / "ablate"
    proc = run_cli("ablate", "tiny", "--max-new-tokens", 4, "--rounds", 1, "--threads", 1,
                   "--only", "transformers,engine,int8", "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in ("transformers", "engine", "int8"):
        run = load_run(out / name)
        validate_run_dict(run.to_dict())
        assert run.status == "complete" and run.generation.new_tokens == 4
        assert (out / name / "round-1" / "run.json").is_file()
        assert len(run.generations) == 1  # the warm-up's generation is not the row's figure
        assert any(p.name == "warmup" for p in run.phases)
    assert load_run(out / "transformers").model["class"] == "LlamaForCausalLM"
    assert load_run(out / "int8").model["engine_options"]["int8"] is True
    report = json.loads((out / "ablation.json").read_text())
    figures = {f["name"]: f for f in report["figures"]}
    assert set(figures) == {"transformers", "engine", "int8"}
    assert report["read_bandwidth_gbps"] == pytest.approx(20.0)  # from the seeded cache
    assert figures["engine"]["agreement"] == 1.0 and figures["int8"]["agreement"] is not None
    assert figures["transformers"]["agreement"] == 1.0  # the same prompt, fp32, greedy: the same tokens
    # The engine row runs first in each round, so the others are checked against its tokens.
    assert figures["transformers"]["forced_agreement"] == 1.0
    assert 0.0 <= figures["int8"]["forced_agreement"] <= 1.0
    check = next(p for p in load_run(out / "int8").phases if p.name == "agreement_check")
    assert check.detail["reference_tokens"] == 4
    assert figures["engine"]["speedup_vs_baseline"] > 0 and figures["int8"]["floor_share"] > 0
    for name in ("transformers fp32", "engine fp32", "int8 weight-only"):
        assert name in proc.stdout


def test_ablation_runs_the_faster_row_when_the_estimated_best_loses(
    lmprof_cache, tiny_model, tmp_path, monkeypatch
):
    # Rows run through a stand-in for the row process: the rates are set, the runner's choice is what
    # is tested. int8 x native is estimated above W8A8 (3 x 3.5 > 10), then runs slower than it.
    import lmprof.ablation.runner as runner

    why_not = runner._native_unavailable("cpu") or runner._w8a8_unavailable("cpu")
    if why_not:
        pytest.skip(why_not)
    monkeypatch.setenv("LMPROF_CACHE", str(lmprof_cache))
    seed_probe_cache(lmprof_cache, threads=1)
    rates = {"engine": 10.0, "native": 30.0, "int8": 35.0, "w8a8": 100.0}
    ran: list[tuple[str, dict]] = []

    def fake_job(job):
        ran.append((job.row.name, dict(job.row.options)))
        Path(job.out).mkdir(parents=True, exist_ok=True)
        (Path(job.out) / "run.json").write_text("{}")
        rate = rates.get(job.row.name) or (100.0 if job.row.options.get("int8_activations") else 80.0)
        return RoundFigures(ttft_s=0.1, decode_tokens_per_s=rate, step_s=1 / rate, peak_memory_bytes=1), None

    monkeypatch.setattr(runner, "_run_job", fake_job)
    req = runner.AblationRequest(model="tiny", out=tmp_path / "ablate", max_new_tokens=4, rounds=1, threads=1,
                                 only=["engine", "native", "int8", "w8a8", "best"])  # fmt: skip
    report = runner.run_ablation(req)
    best_runs = [options for name, options in ran if name == BEST]
    assert best_runs == [{"native_decode": True, "int8": True},
                         {"int8": True, "native_decode": True, "int8_activations": True}]  # fmt: skip
    assert report.best_combines == ["w8a8"] and "below the w8a8 row alone" in report.best_note
    best = next(r for r in report.rows if r.name == BEST)
    assert [f.decode_tokens_per_s for f in best.rounds] == [100.0]  # the replaced run is not a round
    assert load_report(tmp_path / "ablate").best_note == report.best_note  # saved with the report
