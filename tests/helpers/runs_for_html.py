"""A hand-built Run for the HTML report tests: every section has data, and everything that
can come from a model or a user carries markup that must show as text, never run."""

from __future__ import annotations

from helpers.runs_for_tests import MiB, sample_run
from lmprof.record.deep import DeepProfile, FlameGraph
from lmprof.record.run import Run

PROMPT = "<script>alert(1)</script>"
TEXT = '<img src=x onerror="alert(2)"> & </pre><script>alert(3)</script>'
MODEL_ID = '"><script>alert(4)</script>'
FRAME = "op:<b>aten::mm</b> & </svg><script>alert(5)</script>"


def hostile_run() -> Run:
    run = sample_run()
    run.generation.prompt = PROMPT
    run.generation.text = TEXT
    run.model["id"] = MODEL_ID
    run.phases[2].name = "resolve<i>x</i>"
    run.warnings = ["<b>not bold</b>: a warning"]
    run.system = {"hostname": "<host>", "cpu": {"model": "Test CPU <x>", "logical_cores": 2}}
    run.environment = {"torch_threads": 2, "thread_env": {"OMP_NUM_THREADS": "<unset>"}}
    run.memory.device = {
        "t_s": [2.0, 2.5, 3.0],
        "allocated_bytes": [1 * MiB, 3 * MiB, 2 * MiB],
        "reserved_bytes": [4 * MiB, 4 * MiB, 4 * MiB],
    }
    run.deep = DeepProfile(
        operators={
            "decode": [
                {"name": "aten::mm", "calls": 30, "self_cpu_s": 0.02, "total_cpu_s": 0.03, "self_device_s": 0.0,
                 "total_device_s": 0.0, "flops": 0, "shapes": ["[[1, 64], [64, 64]]"]},
                {"name": "aten::<add>", "calls": 90, "self_cpu_s": 0.005, "total_cpu_s": 0.005, "self_device_s": 0.0,
                 "total_device_s": 0.0, "flops": 0, "shapes": []},
                {"name": "aten::softmax", "calls": 6, "self_cpu_s": 0.009, "total_cpu_s": 0.012, "self_device_s": 0.0,
                 "total_device_s": 0.0, "flops": 0, "shapes": ["[[1, 4, 1, 16]]"]},
            ],
        },
        modules={
            "decode": [
                {"path": "model.layers.0.mlp", "type": "LlamaMLP", "calls": 3, "total_s": 0.04, "self_s": 0.01, "device_s": 0.0},
                {"path": "model.layers.1.mlp", "type": "LlamaMLP", "calls": 3, "total_s": 0.05, "self_s": 0.01, "device_s": 0.0},
                {"path": "model.layers.0.self_attn", "type": "LlamaAttention", "calls": 3, "total_s": 0.06, "self_s": 0.02, "device_s": 0.0},
            ],
        },
        step_breakdown={"decode": {"wall_s": 1.48, "steps": 3, "parts_s": {"attention": 0.6, "mlp": 0.5, "outside_model": 0.3}}},
        flames=[
            FlameGraph("time", "seconds", "hand-built", stacks=[["phase:prefill", "op:aten::mm"], ["phase:decode", FRAME],
                                                                ["phase:decode", "op:aten::softmax"]], weights=[0.5, 0.9, 0.3]),
            FlameGraph("memory", "bytes", "hand-built", stacks=[["alloc:weights", "module:model.embed_tokens"],
                                                                ["alloc:kv_cache", "module:model.layers.0.self_attn"]],
                       weights=[4_000_000, 262_144]),
        ],
        memory_by_kind={
            "host": {"where": "host", "measured": "RSS", "measured_bytes": 700 * MiB,
                     "parts": {"weights_mapped": 5 * MiB, "kv_cache": 1 * MiB, "outside_torch": 694 * MiB}},
            "expected": {"weights": 5 * MiB, "kv_cache": 2 * MiB, "kv_bytes_per_token": 512, "activations_estimate": 43008},
            "kv_growth_bytes_per_token": 512.0,
        },
    )  # fmt: skip
    return run
