"""Issue 21 on hand-built records: the tracer's cost taken out of the step's shares, memory by
kind at the workload's own peak of live memory (slack its own kind, parts adding up), and the
trace reader filing lmprof's fast module ranges as ranges."""

from __future__ import annotations

import pytest

from lmprof.analyze.deep import untraced_reference
from lmprof.analyze.inside_run import step_breakdown, untraced_step_estimate
from lmprof.analyze.memory_kinds import device_memory_by_kind, host_memory_by_kind, kv_leaving_step
from lmprof.analyze.trace_tree import build_tree
from lmprof.collect.trace_events import CLOCK_MARKER, Span, read_spans
from lmprof.record.run import Generation, MemoryTimeline, Phase, Run

MiB = 1 << 20


def span(name: str, cat: str, start_s: float, dur_s: float) -> Span:
    return Span(name=name, cat=cat, start_s=start_s, dur_s=dur_s, tid=1)


def breakdown(spans: list[Span], steps: int = 1) -> dict:
    spans = sorted(spans, key=lambda s: (s.start_s, -s.dur_s))
    return step_breakdown(build_tree(spans, 1), {"decode": (0.0, 10.0)}, {"decode": steps})["decode"]


def test_the_tracer_s_bookkeeping_is_counted_in_the_part_it_ran_in():
    got = breakdown([
        span("module:Model", "user_annotation", 0.0, 6.0),
        span("module:layers.0.mlp", "user_annotation", 1.0, 3.0),
        span("aten::mm", "cpu_op", 1.5, 1.0),
        span("aten::add", "cpu_op", 2.6, 0.2),
        span("aten::argmax", "cpu_op", 7.0, 0.5),
    ])  # fmt: skip
    # the root range and the argmax run outside any module; the mlp range opens in the root's
    # Python; the two ops inside the mlp range run in that range's own (Python) time
    assert got["traced_ranges"] == {"outside_model": 1, "python_in_model": 1}
    assert got["traced_ops"] == {"python_in_model": 2, "outside_model": 1}


def test_untraced_estimate_subtracts_the_tracer_then_scales_to_the_untraced_step():
    b = {
        "steps": 2,
        "per_step_s": {"mlp": 0.010, "python_in_model": 0.006, "outside_model": 0.004},
        "traced_ops": {"python_in_model": 1000},  # 500 a step
        "traced_ranges": {"python_in_model": 400},  # 200 a step
    }
    est = untraced_step_estimate(b, per_op_s=4e-6, per_range_s=5e-6, untraced_step_s=0.015)
    # python: 6 ms - 500 x 4 µs - 200 x 5 µs = 3 ms; parts 10 + 3 + 4 = 17 ms, scaled to 15 ms
    assert est["tracer_per_step_s"] == pytest.approx(0.003)
    assert est["scale"] == pytest.approx(15 / 17)
    assert est["per_step_s"]["python_in_model"] == pytest.approx(0.003 * 15 / 17)
    assert sum(est["per_step_s"].values()) == pytest.approx(0.015)
    assert est["ops_per_step"] == 500 and est["ranges_per_step"] == 200


def test_untraced_reference_is_the_untraced_call_s_same_steps():
    traced = Generation("pipeline", 1, 5, 6, 0.0, 0.5, 2.0, 0.5, 1.5, [0.3] * 5, "host_clock", traced=True)
    plain = Generation("pipeline", 1, 5, 6, 3.0, 3.1, 3.6, 0.1, 0.5, [0.1, 0.1, 0.1, 0.2, 0.2], "host_clock")
    ref = untraced_reference([traced, plain], steps_traced=3)
    assert ref == {"prefill": 0.1, "decode": pytest.approx(0.1)}


def memory_run(rss: list[int], file_rss: list[int]) -> Run:
    run = Run(run_id="x", created_at="", lmprof_version="0", command=[], settings={})
    run.model = {"weight_bytes": 100 * MiB, "device": "cpu", "config": {}}
    run.phases = [Phase(name="load_model", start_s=0.0, end_s=1.0, depth=0, parent_index=None, cpu_s=1.0,
                        rss_start_bytes=0, rss_end_bytes=0, rss_peak_bytes=0, file_rss_start_bytes=10 * MiB,
                        file_rss_end_bytes=10 * MiB)]  # fmt: skip
    t = [float(i) for i in range(len(rss))]
    run.memory = MemoryTimeline(interval_s=1.0, host={"t_s": t, "rss_bytes": rss, "file_rss_bytes": file_rss})
    return run


def test_host_memory_is_split_at_the_peak_of_live_torch_memory_not_the_highest_rss():
    # the call runs from t=2 to t=8; live torch bytes peak at t=5; RSS is highest later (t=8),
    # once the cache was freed and its pages stayed resident
    rss = [300 * MiB, 300 * MiB, 300 * MiB, 305 * MiB, 310 * MiB, 330 * MiB, 320 * MiB, 320 * MiB, 340 * MiB]
    file_rss = [110 * MiB] * 9
    run = memory_run(rss, file_rss)
    live = [(3.0, 5 * MiB), (5.0, 18 * MiB), (7.0, 1 * MiB)]
    kv = [(2.5, 0), (4.5, 8 * MiB), (5.5, 12 * MiB), (6.5, 0)]
    host = host_memory_by_kind(run, (2.0, 8.0), kv, live)
    assert host["moment"] == "peak of live torch memory" and host["t_s"] == 5.0
    parts = host["parts"]
    assert sum(parts.values()) == host["measured_bytes"] == 330 * MiB  # the highest sample within 1 s
    assert parts["kv_cache"] == 12 * MiB  # as the step running at t=5 leaves it
    assert parts["activations_and_temporaries"] == 6 * MiB
    assert parts["weights_mapped"] == 100 * MiB
    # before the call: 190 MiB anonymous outside torch; the call added 30 MiB, 18 of them live
    assert parts["outside_torch"] == 190 * MiB
    assert parts["allocator_and_heap_slack"] == 12 * MiB
    assert parts["unattributed"] == 0


def test_without_allocator_events_the_highest_rss_sample_is_the_moment():
    run = memory_run([300 * MiB, 320 * MiB, 310 * MiB], [110 * MiB] * 3)
    host = host_memory_by_kind(run, (0.5, 2.5), [(0.5, MiB)], [])
    assert host["moment"] == "highest RSS sample" and host["measured_bytes"] == 320 * MiB
    assert sum(host["parts"].values()) == 320 * MiB


def test_device_memory_parts_add_up_to_reserved_at_the_allocated_peak():
    run = memory_run([300 * MiB], [110 * MiB])
    run.memory.device = {
        "t_s": [4.9],
        "allocated_bytes": [0],
        "reserved_bytes": [0],
        "nvml_used_bytes": [900 * MiB],
    }
    cuda = [(3.0, 130 * MiB, 160 * MiB), (5.0, 150 * MiB, 200 * MiB), (9.0, 400 * MiB, 400 * MiB)]
    dev = device_memory_by_kind(run, (2.0, 8.0), [(4.0, 20 * MiB), (6.0, 30 * MiB)], cuda)
    parts = dev["parts"]
    assert dev["measured"] == "reserved" and dev["measured_bytes"] == 200 * MiB
    assert parts == {"weights": 100 * MiB, "kv_cache": 30 * MiB, "activations_and_temporaries": 20 * MiB,
                     "allocator_slack": 50 * MiB, "unattributed": 0}  # fmt: skip
    assert dev["beyond_reserved_bytes"] == 700 * MiB


def test_kv_leaving_step():
    samples = [(0.0, 0), (1.0, 10), (2.0, 20)]
    assert kv_leaving_step(samples, 0.5) == 10
    assert kv_leaving_step(samples, 2.5) == 20


def test_fast_module_ranges_are_read_as_ranges():
    events = [
        {"name": CLOCK_MARKER, "ph": "X", "ts": 100.0, "dur": 1.0, "cat": "user_annotation"},
        {"name": "module:model.layers.0", "ph": "X", "ts": 110.0, "dur": 5.0, "cat": "cpu_op"},
        {"name": "aten::mm", "ph": "X", "ts": 111.0, "dur": 2.0, "cat": "cpu_op"},
    ]
    spans = read_spans(events, marker_s=1.0)
    cats = {s.name: s.cat for s in spans}
    assert cats == {"module:model.layers.0": "user_annotation", "aten::mm": "cpu_op"}
    assert spans[0].start_s == pytest.approx(1.0 + 10e-6)


def test_the_step_table_shows_the_untraced_estimate_and_older_records_still_render():
    from rich.console import Console

    from lmprof.render.deep_view import step_table

    traced = {"wall_s": 0.040, "steps": 2, "parts_s": {"mlp": 0.030, "python_in_model": 0.010},
              "per_step_s": {"mlp": 0.015, "python_in_model": 0.005}}  # fmt: skip

    def text(breakdown: dict) -> str:
        console = Console(width=140, record=True, color_system=None)
        console.print(step_table(breakdown, "decode step"))
        return console.export_text()

    old = text(traced)  # a record from before issue 21: the traced step alone
    assert "One decode step, on average over 2 (traced)" in old and "untraced" not in old
    estimate = untraced_step_estimate(
        {**traced, "traced_ops": {"python_in_model": 200}, "traced_ranges": {}}, 10e-6, 0.0, 0.016
    )
    new = text({**traced, "untraced": estimate})
    assert "One decode step, untraced (estimated from 2 traced)" in new
    assert "Shares describe the untraced step (16.0 ms, measured)" in new
    # python: 5 ms - 100 ops x 10 µs = 4 ms; 15 + 4 = 19 ms scaled to 16 ms
    assert estimate["per_step_s"]["python_in_model"] == pytest.approx(0.004 * 16 / 19)
