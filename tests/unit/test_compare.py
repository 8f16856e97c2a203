"""Comparing runs: headline figures, direction, the noise rule, in-process repeats, run
groups on disk, and --fail-on thresholds. Hand-built runs, no model."""

import pytest
from helpers.runs_for_compare import generation, group, timed_run
from helpers.runs_for_tests import MiB, phase

from lmprof.analyze.compare import (
    SOURCE_IN_PROCESS,
    SOURCE_REPEAT_RUNS,
    SOURCE_SINGLE,
    compare,
    run_figures,
)
from lmprof.analyze.thresholds import breaches, check_thresholds, parse_threshold, parse_thresholds
from lmprof.errors import RunFileError, UsageError
from lmprof.record.deep import DeepProfile
from lmprof.record.groups import load_run_group

# --- figures of one run --------------------------------------------------------------


def test_run_figures_reads_load_phases_generation_memory_and_wall():
    figures = run_figures(timed_run(load_model_s=0.3, prefill_s=0.4, peak_rss_bytes=700 * MiB))
    assert figures["load_model_s"] == pytest.approx(0.3)
    assert figures["read_weights_s"] == pytest.approx(0.2)
    assert figures["ttft_s"] == pytest.approx(0.41)  # tokenize 10 ms + prefill
    assert figures["decode_tokens_per_s"] == pytest.approx(3 / 1.48)
    assert figures["itl_p50_s"] == pytest.approx(0.5)
    assert figures["peak_rss_bytes"] == 700 * MiB
    assert figures["wall_s"] == pytest.approx(4.8)
    assert "to_device_s" not in figures  # a phase the run did not have is absent, not zero
    assert "peak_device_allocated_bytes" not in figures


def test_load_phase_wall_is_summed_over_occurrences():
    run = timed_run()
    run.phases.append(phase("load_tokenizer", 5.0, 5.25))
    assert run_figures(run)["load_tokenizer_s"] == pytest.approx(0.4 + 0.25)


def test_memory_by_kind_parts_become_figures_with_or_without_bytes_suffix():
    run = timed_run(memory_parts={"weights": 5 * MiB, "kv_cache_bytes": MiB})
    figures = run_figures(run)
    assert figures["memory_weights_bytes"] == 5 * MiB
    assert figures["memory_kv_cache_bytes"] == MiB
    comparison = compare([group(run), group(timed_run(memory_parts={"weights": 4 * MiB, "kv_cache": MiB}))])
    row = comparison.row("memory_weights_bytes")
    assert row is not None and row.spec.section == "memory"
    assert row.changes[0].verdict == "better"


def test_memory_by_kind_host_and_device_splits_become_prefixed_figures():
    run = timed_run()
    run.deep = DeepProfile(
        memory_by_kind={
            "host": {"where": "host", "parts": {"kv_cache": MiB, "weights_mapped": 4 * MiB}},
            "device": {"where": "device", "parts": {"allocator_reserve": 2 * MiB}},
            "expected": {"weights": 9 * MiB},
        }
    )
    figures = run_figures(run)
    assert figures["memory_host_kv_cache_bytes"] == MiB
    assert figures["memory_host_weights_mapped_bytes"] == 4 * MiB
    assert figures["memory_device_allocator_reserve_bytes"] == 2 * MiB
    assert not any("expected" in name for name in figures)


def test_traced_generation_is_left_out_when_an_untraced_one_exists():
    traced = generation(2.0)  # torch.profiler made it slow
    traced.traced = True
    run = timed_run("a")
    run.generation = traced
    run.generations = [traced, generation(0.5)]
    assert run_figures(run)["ttft_s"] == pytest.approx(0.51)
    only_traced = timed_run("b")
    only_traced.generation.traced = True
    comparison = compare([group(run), group(only_traced)])
    assert comparison.groups[0].in_process_repeats == 1
    assert any(note.startswith("B: generation figures come from a call traced") for note in comparison.notes)


# --- direction and the noise rule ------------------------------------------------------


def test_direction_lower_time_and_memory_better_higher_throughput_better():
    base = timed_run("a")
    other = timed_run("b", prefill_s=0.6, steps_s=(0.4, 0.4, 0.4), peak_rss_bytes=600 * MiB)
    comparison = compare([group(base), group(other)])
    verdict = {r.spec.name: r.changes[0].verdict for r in comparison.rows}
    assert verdict["ttft_s"] == "worse"  # slower first token
    assert verdict["prefill_tokens_per_s"] == "worse"
    assert verdict["tpot_s"] == "better"
    assert verdict["decode_tokens_per_s"] == "better"
    assert verdict["peak_rss_bytes"] == "better"
    assert verdict["load_model_s"] == "same"
    ttft = comparison.row("ttft_s").changes[0]
    assert ttft.delta == pytest.approx(0.1)
    assert ttft.relative == pytest.approx(0.1 / 0.51)


def test_one_run_each_means_noise_unknown_and_says_so():
    comparison = compare([group(timed_run("a")), group(timed_run("b", prefill_s=0.9))])
    ttft = comparison.row("ttft_s").changes[0]
    assert ttft.noise is None and ttft.beyond_noise is None
    assert not comparison.noise_known
    assert any(note.startswith("noise unknown") for note in comparison.notes)
    assert comparison.row("ttft_s").measures[0].source == SOURCE_SINGLE


def test_beyond_noise_when_change_exceeds_combined_spread():
    # A: ttft 0.49, 0.51, 0.53 (median 0.51, spread 0.02). B single: borrows 0.02 -> noise 0.04.
    base = group(*(timed_run(f"a{i}", prefill_s=p) for i, p in enumerate((0.48, 0.50, 0.52))))
    within = compare([base, group(timed_run("b", prefill_s=0.53))]).row("ttft_s").changes[0]
    assert within.noise == pytest.approx(0.04)
    assert within.beyond_noise is False
    beyond = compare([base, group(timed_run("b", prefill_s=0.56))]).row("ttft_s").changes[0]
    assert beyond.beyond_noise is True
    assert beyond.noise_relative == pytest.approx(0.04 / 0.51)


def test_repeat_runs_give_median_and_range():
    base = group(*(timed_run(f"a{i}", load_model_s=s) for i, s in enumerate((0.4, 0.9, 0.5))))
    comparison = compare([base, group(timed_run("b"))])
    measure = comparison.row("load_model_s").measures[0]
    assert (measure.center, measure.low, measure.high) == pytest.approx((0.5, 0.4, 0.9))
    assert measure.samples == 3 and measure.source == SOURCE_REPEAT_RUNS
    assert measure.spread == pytest.approx(0.25)
    assert comparison.noise_known
    assert comparison.groups[0].description == "3 repeat runs"


def test_in_process_repeats_give_noise_for_generation_figures_only():
    run = timed_run(
        "a", more_generations=(generation(0.45), generation(0.55), generation(0.9, prompt_tokens=99))
    )
    comparison = compare([group(run), group(timed_run("b", prefill_s=0.8))])
    ttft = comparison.row("ttft_s")
    assert ttft.measures[0].source == SOURCE_IN_PROCESS
    assert ttft.measures[0].samples == 3  # the call with another prompt length is not a repeat
    assert ttft.measures[0].center == pytest.approx(0.51)
    assert ttft.changes[0].beyond_noise is True  # +0.29 s against noise 2 × 0.05
    assert comparison.row("load_model_s").changes[0].beyond_noise is None  # no repeats of loading
    assert comparison.groups[0].description == "1 run, 3 in-process repeats"
    assert any(note.startswith("in-process repeats") for note in comparison.notes)
    assert any(
        note.startswith("noise unknown for the load, memory, run figures") for note in comparison.notes
    )


def test_groups_of_different_models_are_noted_and_rows_missing_everywhere_dropped():
    comparison = compare([group(timed_run("a")), group(timed_run("b", model_id="other"))])
    assert "B differs from A in model" in comparison.notes
    assert comparison.row("peak_device_allocated_bytes") is None


def test_compare_needs_two_groups():
    with pytest.raises(ValueError):
        compare([group(timed_run())])


# --- groups on disk --------------------------------------------------------------------


def test_load_run_group_reads_folder_run_json_and_folder_of_repeats(tmp_path):
    timed_run("a").save(tmp_path / "one")
    assert load_run_group(tmp_path / "one").runs[0].run_id == "a"
    assert load_run_group(tmp_path / "one" / "run.json").runs[0].run_id == "a"
    for name in ("r2", "r1"):
        timed_run(name).save(tmp_path / "repeats" / name)
    (tmp_path / "repeats" / "not-a-run").mkdir()
    repeats = load_run_group(tmp_path / "repeats")
    assert [r.run_id for r in repeats.runs] == ["r1", "r2"]


def test_load_run_group_errors_are_run_file_errors(tmp_path):
    with pytest.raises(RunFileError, match="no run at"):
        load_run_group(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFileError, match="subfolders"):
        load_run_group(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    with pytest.raises(RunFileError, match="not a readable run record"):
        load_run_group(tmp_path / "bad")


# --- thresholds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, figure, op, amount, relative",
    [
        ("ttft_s>+10%", "ttft_s", ">", 0.10, True),
        ("decode_tokens_per_s<-5%", "decode_tokens_per_s", "<", -0.05, True),
        ("peak_rss_bytes>+50MB", "peak_rss_bytes", ">", 50e6, False),
        ("peak_rss_bytes > +1.5 GiB", "peak_rss_bytes", ">", 1.5 * (1 << 30), False),
        ("itl_p99_s>+2ms", "itl_p99_s", ">", 0.002, False),
        ("tpot_s>+500us", "tpot_s", ">", 0.0005, False),
        ("wall_s>+0.5", "wall_s", ">", 0.5, False),
        ("prefill_tokens_per_s<-20tok/s", "prefill_tokens_per_s", "<", -20.0, False),
        ("memory_kv_cache_bytes>+1MiB", "memory_kv_cache_bytes", ">", float(MiB), False),
    ],
)
def test_parse_threshold(text, figure, op, amount, relative):
    t = parse_threshold(text)
    assert (t.figure, t.op, t.relative) == (figure, op, relative)
    assert t.amount == pytest.approx(amount)


def test_parse_thresholds_splits_commas_and_repeats():
    parsed = parse_thresholds(["ttft_s>+10%, tpot_s>+5%", "peak_rss_bytes>+50MB"])
    assert [t.figure for t in parsed] == ["ttft_s", "tpot_s", "peak_rss_bytes"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("ttft_s", "expected FIGURE>AMOUNT"),
        ("ttft_s>=+10%", "expected FIGURE>AMOUNT"),
        ("ttft_s>+ten%", "expected FIGURE>AMOUNT"),
        ("ttfts>+10%", "unknown figure 'ttfts' (did you mean ttft_s?)"),
        ("ttft_s>10%", "give the amount a sign, e.g. 'ttft_s>+10%'"),
        ("ttft_s>+50MB", "'MB' is not a unit of ttft_s"),
        ("peak_rss_bytes>+5ms", "'ms' is not a unit of peak_rss_bytes"),
        ("  ", "empty threshold"),
    ],
)
def test_bad_threshold_is_one_line_usage_error(text, message):
    with pytest.raises(UsageError) as info:
        parse_threshold(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_thresholds_breach_only_past_their_amount():
    comparison = compare(
        [group(timed_run("a")), group(timed_run("b", prefill_s=0.6, peak_rss_bytes=800 * MiB))]
    )
    checks = check_thresholds(
        comparison,
        parse_thresholds(
            ["ttft_s>+10%", "ttft_s>+25%", "peak_rss_bytes>+50MiB", "prefill_tokens_per_s<-20%"]
        ),
    )
    assert [c.breached for c in checks] == [True, False, True, False]
    assert checks[0].value == pytest.approx(0.1 / 0.51)
    assert checks[2].value == pytest.approx(80 * MiB)
    assert [c.threshold.text for c in breaches(checks)] == ["ttft_s>+10%", "peak_rss_bytes>+50MiB"]


def test_threshold_on_a_figure_not_measured_is_reported_not_breached():
    comparison = compare([group(timed_run("a")), group(timed_run("b"))])
    (check,) = check_thresholds(comparison, [parse_threshold("peak_device_allocated_bytes>+1%")])
    assert not check.evaluated and not check.breached
    assert check.reason == "not measured in A or B"


def test_thresholds_check_every_group_against_the_baseline():
    comparison = compare([group(timed_run("a")), group(timed_run("b")), group(timed_run("c", prefill_s=0.9))])
    checks = check_thresholds(comparison, [parse_threshold("ttft_s>+10%")])
    assert [(c.group, c.breached) for c in checks] == [("B", False), ("C", True)]
