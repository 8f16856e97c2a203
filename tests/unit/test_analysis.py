import pytest
from helpers.runs_for_tests import MiB, sample_run

from lmprof.analyze.generation import derive_generation_figures, percentile
from lmprof.analyze.phases import UNATTRIBUTED, phase_rows, refine_phase_peaks, unattributed_s, weight_paging
from lmprof.record.run import Generation


def test_percentile_matches_linear_interpolation():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 90) == pytest.approx(3.7)


def test_generation_figures():
    gen = Generation(
        call="generate", batch_size=2, prompt_tokens=10, new_tokens=5, start_s=1.0, first_token_s=1.5,
        end_s=2.5, prefill_s=0.4, decode_s=1.0, decode_step_latencies_s=[0.2, 0.3, 0.2, 0.3], timing="host_clock",
    )  # fmt: skip
    derive_generation_figures(gen)
    assert gen.ttft_s == 0.5  # from the call's start, not generate's
    assert gen.tpot_s == pytest.approx(0.25)  # decode time over the 4 tokens after the first
    assert gen.decode_tokens_per_s == pytest.approx(4 * 2 / 1.0)
    assert gen.prefill_tokens_per_s == pytest.approx(10 * 2 / 0.4)
    assert gen.itl_percentiles_s["p50"] == pytest.approx(0.25)


def test_phase_rows_cover_the_wall_time():
    run = sample_run()
    rows = phase_rows(run)
    top = [r for r in rows if r.depth == 0]
    assert top[-1].name == UNATTRIBUTED
    assert sum(r.wall_s for r in top) == pytest.approx(run.wall_s)
    assert unattributed_s(run) == pytest.approx(4.8 - (0.5 + 1.0 + 0.1 + 1.0 + 2.0))
    by_name = {r.name: r for r in rows}
    # self time of pipeline_setup excludes load_model and load_tokenizer
    assert by_name["pipeline_setup"].self_s == pytest.approx(1.0 - 0.5 - 0.4)
    assert [r.name for r in rows[:6]] == [
        "python_startup",
        "import_torch",
        "resolve",
        "pipeline_setup",
        "load_model",
        "read_weights",
    ]


def test_repeated_siblings_merge_with_count():
    run = sample_run()
    from helpers.runs_for_tests import phase

    run.phases.append(phase("tokenize", 4.2, 4.25, depth=1, parent=7))
    run.phases.append(phase("tokenize", 4.25, 4.3, depth=1, parent=7))
    rows = [r for r in phase_rows(run) if r.name == "tokenize"]
    assert len(rows) == 1 or rows[-1].count == 2


def test_weight_paging_charges_each_phase_its_own_pages():
    run = sample_run()
    paging = dict(weight_paging(run))
    assert paging["prefill"] == 500 * MiB
    assert paging["read_weights"] == 50 * MiB
    assert "generate" not in paging and "pipeline_call" not in paging  # parents are not charged twice


def test_refine_phase_peaks_uses_samples_inside_the_phase():
    run = sample_run()
    refine_phase_peaks(run.phases, run.memory.host["t_s"], run.memory.host["rss_bytes"])
    by = {p.name: p for p in run.phases}
    assert by["decode"].rss_peak_bytes == 720 * MiB  # the sample at t=3.0
    assert by["tokenize"].rss_peak_bytes == 110 * MiB  # no sample inside: endpoints


def test_cuda_allocator_history_to_stacks():
    from lmprof.analyze.flames import cuda_memory_flame
    from lmprof.collect.trace_events import cuda_allocations_by_stack

    snapshot = {
        "device_traces": [
            [
                {"action": "alloc", "size": 1024, "frames": [
                    {"filename": "/x/site-packages/torch/nn/functional.py", "line": 10, "name": "linear"},
                    {"filename": "/usr/lib/libtorch.so", "line": 0, "name": "c10::alloc"},
                    {"filename": "run.py", "line": 3, "name": "main"}]},
                {"action": "free_requested", "size": 1024, "frames": []},
                {"action": "alloc", "size": 512, "frames": []},
            ]
        ]
    }  # fmt: skip
    allocations = cuda_allocations_by_stack(snapshot)
    assert allocations == [
        (["py:main (run.py:3)", "py:linear (torch/nn/functional.py:10)"], 1024),
        (["py:(no Python frame)"], 512),
    ]
    assert cuda_memory_flame(allocations).total == 1536
