"""`lmprof profile --deep` end to end on the tiny preset: the views recorded in the Run and
the exports written beside it, checked for structure and for adding up."""

import json
import re
from pathlib import Path

import jsonschema
import pytest

from lmprof.record.run import load_run, validate_run_dict
from lmprof.render.folded import parse_folded

SPEEDSCOPE_SCHEMA = Path(__file__).parents[1] / "fixtures" / "exports" / "speedscope-file-format-schema.json"


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory, lmprof_cache):
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("deep") / "run"
    env = dict(os.environ, LMPROF_CACHE=str(lmprof_cache))
    proc = subprocess.run(
        [sys.executable, "-m", "lmprof", "profile", "tiny", "--deep", "--max-new-tokens", "10", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, load_run(out), proc.stdout


def test_deep_run_is_valid_and_rendered(deep_run):
    out, run, stdout = deep_run
    validate_run_dict(run.to_dict())
    assert run.deep is not None
    for title in (
        "One decode step",
        "Operators in decode",
        "Modules in decode",
        "Memory by kind",
        "Cost of watching",
    ):
        assert title in stdout


def test_traced_and_untraced_calls(deep_run):
    _, run, _ = deep_run
    traced = [g for g in run.generations if g.traced]
    plain = [g for g in run.generations if not g.traced]
    assert len(traced) == 1 and len(plain) == 1
    assert run.generation == plain[0]  # the headline figures are the undistorted ones
    from statistics import median

    cost = run.deep.overhead["torch.profiler"]
    expected = median(traced[0].decode_step_latencies_s) / median(plain[0].decode_step_latencies_s)
    assert cost["decode_slowdown"] == pytest.approx(expected)


def test_modules_and_ops_per_stage(deep_run):
    _, run, _ = deep_run
    deep = run.deep
    decode_steps = run.generation.new_tokens - 1
    by_path = {m["path"]: m for m in deep.modules["decode"]}
    assert by_path["LlamaForCausalLM"]["calls"] == decode_steps  # one forward per decode step
    assert by_path["lm_head"]["calls"] == decode_steps
    assert by_path["model.layers.0.mlp"]["calls"] == decode_steps
    assert {m["path"]: m["calls"] for m in deep.modules["prefill"]}["LlamaForCausalLM"] == 1
    ops = {o["name"]: o for o in deep.operators["decode"]}
    assert "aten::mm" in ops or "aten::addmm" in ops
    # Per-module time covers the decode step's in-model time: the model's root range equals
    # its in-model parts (ops by category plus Python between them) within 5%.
    parts = deep.step_breakdown["decode"]["parts_s"]
    in_model = sum(v for k, v in parts.items() if k != "outside_model")
    assert in_model == pytest.approx(by_path["LlamaForCausalLM"]["total_s"], rel=0.05)
    # and the parts add up to the decode wall time
    assert sum(parts.values()) == pytest.approx(deep.step_breakdown["decode"]["wall_s"], rel=1e-6)


def test_flame_weight_is_the_run_wall_time(deep_run):
    _, run, _ = deep_run
    flame = run.deep.flame("time")
    assert flame.total == pytest.approx(run.wall_s, rel=0.01)
    roots = {stack[0] for stack in flame.stacks}
    assert {"phase:import_torch", "phase:pipeline_call"} <= roots
    deepest = max(flame.stacks, key=len)
    assert any(f.startswith("module:") for f in deepest) and any(f.startswith("op:aten::") for f in deepest)
    assert not any(f.startswith("py:") for f in deepest)  # Python frames are opt-in (--python-stacks)


def test_python_stacks_join_the_flame(run_cli, tmp_path):
    out = tmp_path / "stacks"
    proc = run_cli("profile", "tiny", "--deep", "--python-stacks", "--deep-allocations", "--python-profiler",
                   "none", "--max-new-tokens", 4, "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    # --deep-allocations: live Python allocations by stack (tracemalloc), opt-in since issue 21
    allocations = run.deep.flame("memory-python")
    assert allocations is not None and allocations.unit == "bytes" and allocations.total > 0
    assert all(frame.startswith("py:") for stack in allocations.stacks for frame in stack)
    flame = run.deep.flame("time")
    assert flame.total == pytest.approx(run.wall_s, rel=0.01)
    # one stack from the phase through Python frames and the module path to the aten op
    full = [s for s in flame.stacks if s[0].startswith("phase:") and any(f.startswith("py:") for f in s)
            and any(f.startswith("module:") for f in s) and s[-1].startswith("op:aten::")]  # fmt: skip
    assert full
    stack = full[0]
    assert stack.index(next(f for f in stack if f.startswith("py:"))) < stack.index(
        next(f for f in stack if f.startswith("module:"))
    )


def test_memory_parts_add_up(deep_run):
    _, run, _ = deep_run
    host = run.deep.memory_by_kind["host"]
    assert sum(host["parts"].values()) == host["measured_bytes"]
    expected = run.deep.memory_by_kind["expected"]
    assert run.deep.memory_by_kind["kv_growth_bytes_per_token"] == expected["kv_bytes_per_token"]


def test_exports_parse_in_their_formats(deep_run):
    out, run, _ = deep_run
    schema = json.load(open(SPEEDSCOPE_SCHEMA))
    for flame in run.deep.flames:
        doc = json.loads((out / f"flame-{flame.name}.speedscope.json").read_text())
        jsonschema.validate(doc, schema)
        lines = parse_folded((out / f"flame-{flame.name}.folded").read_text())
        assert lines
        svg = (out / f"flame-{flame.name}.svg").read_text()
        assert svg.startswith("<?xml") or svg.startswith("<svg")
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"prefill", "decode"} <= names
    assert any(e.get("ph") == "C" for e in trace["traceEvents"])
    assert all(e["ts"] >= 0 for e in trace["traceEvents"] if "ts" in e)
    assert any(re.match(r"aten::", str(e.get("name"))) for e in trace["traceEvents"])


def test_python_profile_by_py_spy(deep_run):
    out, run, stdout = deep_run
    py = run.deep.python
    if not py["available"]:
        pytest.skip(f"py-spy unavailable here: {py['reason']}")
    assert py["sampler"] == "py-spy" and py["functions"] and py["total_s"] > 0
    assert (out / "flame-python.svg").exists()
    assert run.deep.overhead["py-spy"]["slowdown"] > 0


def test_cprofile_writes_pstats(run_cli, tmp_path):
    import pstats

    out = tmp_path / "cp"
    proc = run_cli(
        "profile", "tiny", "--deep", "--python-profiler", "cprofile", "--max-new-tokens", 3, "--out", out
    )
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    assert run.deep.python["sampler"] == "cprofile" and run.deep.python["pstats_file"] == "profile.pstats"
    stats = pstats.Stats(str(out / "profile.pstats"))
    assert any(name == "generate" for (_, _, name) in stats.stats)
    assert any(r["calls"] for r in run.deep.python["functions"])


def test_only_the_first_decode_steps_are_traced(run_cli, tmp_path):
    out = tmp_path / "steps"
    proc = run_cli("profile", "tiny", "--deep", "--deep-steps", 3, "--python-profiler", "none",
                   "--max-new-tokens", 9, "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    assert run.deep.step_breakdown["decode"]["steps"] == 3
    by_path = {m["path"]: m for m in run.deep.modules["decode"]}
    assert by_path["LlamaForCausalLM"]["calls"] == 3
    assert "first 3 decode steps" in " ".join(run.deep.notes)


def test_python_allocations_are_opt_in(deep_run):
    _, run, _ = deep_run
    assert run.deep.flame("memory-python") is None  # tracemalloc costs: --deep-allocations


def test_lmprof_s_own_work_stays_out_of_the_run_s_figures(deep_run, run_cli, tmp_path):
    out, run, stdout = deep_run
    own = run.deep.overhead["lmprof"]
    assert own["export_s"] > 0 and own["analysis_s"] > 0 and "lmprof's own work" in stdout
    # the trace is read back after the run's wall clock stopped, not inside pipeline_call
    export = next(p for p in run.phases if p.name == "lmprof_trace_export")
    assert export.wall_s < own["export_s"] + own["analysis_s"]
    # a --deep run's headline peak RSS is the workload's: within 5% of a plain run's
    plain_out = tmp_path / "plain"
    proc = run_cli("profile", "tiny", "--max-new-tokens", 10, "--out", plain_out)
    assert proc.returncode == 0, proc.stderr
    plain = load_run(plain_out)
    assert run.memory.peak_rss_bytes == pytest.approx(plain.memory.peak_rss_bytes, rel=0.05)


def test_step_shares_describe_the_untraced_step(deep_run):
    _, run, _ = deep_run
    decode = run.deep.step_breakdown["decode"]
    untraced = decode["untraced"]
    plain = next(g for g in run.generations if not g.traced)
    steps = plain.decode_step_latencies_s[: decode["steps"]]
    assert untraced["step_s"] == pytest.approx(sum(steps) / len(steps))
    assert sum(untraced["per_step_s"].values()) == pytest.approx(untraced["step_s"])
    assert untraced["ops_per_step"] > 0 and untraced["ranges_per_step"] > 0
    assert untraced["per_op_s"] >= 0 and untraced["per_range_s"] >= 0


def test_kv_part_at_the_live_peak_is_the_cache_at_that_step(run_cli, tmp_path):
    """A generation long enough for the KV cache to matter, every step traced: the memory-by-kind
    moment is the traced call's own peak of live torch memory, and its KV part is the cache's
    size at that step (prompt plus the tokens made so far, times the measured bytes per token)."""
    out = tmp_path / "kv"
    proc = run_cli("profile", "tiny", "--deep", "--deep-steps", 0, "--python-profiler", "none",
                   "--max-new-tokens", 96, "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    by_kind = run.deep.memory_by_kind
    host = by_kind["host"]
    assert host["moment"] == "peak of live torch memory"
    assert sum(host["parts"].values()) == host["measured_bytes"]
    traced = next(g for g in run.generations if g.traced)
    per_token = by_kind["kv_growth_bytes_per_token"]
    assert per_token == by_kind["expected"]["kv_bytes_per_token"]
    # which step ran at the peak: prefill leaves the prompt's tokens, decode step j one more each
    t, boundary, step = host["t_s"], traced.first_token_s, 0
    for latency in traced.decode_step_latencies_s:
        if t < boundary:
            break
        boundary += latency
        step += 1
    tokens = traced.prompt_tokens + step
    assert host["parts"]["kv_cache"] == pytest.approx(tokens * per_token, rel=0.05)
    assert host["parts"]["kv_cache"] > 0.2 * host["live_bytes"]  # the cache matters at this length


def test_show_sorts_the_function_table(run_cli, deep_run):
    out, run, _ = deep_run
    if not run.deep.python["available"]:
        pytest.skip("py-spy unavailable")
    proc = run_cli("show", out, "--functions", "total", "--limit", 5)
    assert proc.returncode == 0 and "Python functions (by total time)" in proc.stdout
    proc = run_cli("show", out, "--functions", "calls")  # a sampler cannot count calls
    assert proc.returncode == 2 and "cannot count calls" in proc.stderr
