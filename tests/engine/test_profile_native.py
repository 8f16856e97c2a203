"""`lmprof profile --engine lmprof --native`: the native decode step profiled as any run is,
its kernel load timed, its inside seen by --deep, its bad combinations refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rich.console import Console

from lmprof.engine.native.tuning import prefetch_bytes
from lmprof.errors import UsageError
from lmprof.record.run import load_run
from lmprof.render.html_tables import generation_html
from lmprof.render.terminal import generation_table


@pytest.fixture(scope="module")
def native_deep_run(tmp_path_factory, lmprof_cache, ops):
    out = tmp_path_factory.mktemp("native") / "run"
    command = [sys.executable, "-m", "lmprof", "profile", "tiny", "--engine", "lmprof", "--native", "--deep",
               "--device", "cpu", "--python-profiler", "none", "--max-new-tokens", "6", "--deep-shapes",
               "--out", str(out)]  # fmt: skip
    env = dict(os.environ, LMPROF_CACHE=str(lmprof_cache))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return load_run(out)


def test_profile_native_times_the_kernel_load_and_decodes_the_same_text(native_deep_run, run_cli, tmp_path):
    run = native_deep_run
    assert run.status == "complete" and run.model["engine_options"]["native_decode"] is True
    names = [p.name for p in run.phases]
    assert "load_native_kernels" in names and names.index("load_native_kernels") < names.index("generate")
    load_phase = run.phases[names.index("load_native_kernels")]
    assert load_phase.detail["prefetch_bytes"] == list(prefetch_bytes())  # what the kernels ran with
    console = Console(record=True, width=200)
    console.print(generation_table(run))
    assert "software prefetch" in console.export_text()
    assert "software prefetch" in generation_html(run)  # the HTML report says it too
    proc = run_cli(
        "profile", "tiny", "--engine", "lmprof", "--max-new-tokens", 6, "--out", tmp_path / "torch"
    )
    assert proc.returncode == 0, proc.stderr
    assert run.generation.text == load_run(tmp_path / "torch").generation.text


def test_profile_native_deep_views_see_inside_the_native_step(native_deep_run):
    deep = native_deep_run.deep
    ops = {o["name"] for o in deep.operators["decode"]}
    assert {"lmprof_native::decode_step", "lmprof_native::matvec", "lmprof_native::attention"} <= ops
    assert "lmprof_native::pick_greedy" in ops and "aten::argmax" not in ops  # greedy picks, natively
    # The native call embeds, rotates and claims the slot itself: no torch op of the step's own.
    assert not {"aten::embedding", "aten::cos", "aten::cumsum", "aten::isin", "aten::where"} & ops
    modules = {m["path"] for m in deep.modules["decode"]}
    assert {"layers.0.attention", "layers.0.mlp.down_proj", "lm_head"} <= modules
    per_step = deep.step_breakdown["decode"]["per_step_s"]
    assert (
        per_step["attention"] > 0 and per_step["mlp"] > 0 and per_step["lm_head"] > 0 and per_step["norm"] > 0
    )
    decode_step_row = next(o for o in deep.operators["decode"] if o["name"] == "lmprof_native::decode_step")
    assert len(decode_step_row["shapes"][0]) < 300  # tensor-list inputs are summarized


@pytest.mark.parametrize(
    "args,message",
    [
        (["--native"], "--engine lmprof"),
        (["--engine", "lmprof", "--native", "--device", "cpu", "--dtype", "bfloat16"], "native_decode"),
        (["--int8"], "--engine lmprof"),
        (["--engine", "lmprof", "--int8", "--int8-activations"], "add --int8 --native"),
    ],
)
def test_profile_native_bad_combinations_are_one_line(tiny_model, run_cli, tmp_path, args, message):
    proc = run_cli("profile", "tiny", *args, "--max-new-tokens", 2, "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_profile_w8a8_runs_and_records_the_switch(run_cli, tmp_path, ops, needs_w8a8):
    out = tmp_path / "run"
    proc = run_cli(
        "profile", "tiny", "--engine", "lmprof", "--native", "--int8", "--int8-activations", "--device", "cpu",
        "--max-new-tokens", 4, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    assert run.status == "complete"
    assert (
        run.settings["engine_options"]["int8_activations"] is True
        and run.model["engine_options"]["int8"] is True
    )
    assert "W8A8" in run.model["weights"]


def test_native_on_a_gpu_is_refused_before_the_model_is_resolved(monkeypatch):
    # On a GPU host --device auto picks CUDA; the refusal must come before a download or a load.
    import lmprof.models
    import lmprof.workloads.request
    from lmprof.session import ProfileSession
    from lmprof.workloads.engine import run_engine_profile
    from lmprof.workloads.request import ProfileRequest

    def resolved(*args, **kwargs):
        raise AssertionError("the model was resolved before the device was refused")

    monkeypatch.setattr(lmprof.workloads.request, "choose_device", lambda requested: "cuda:0")
    monkeypatch.setattr(lmprof.models, "resolve_model", resolved)
    request = ProfileRequest(model="tiny", engine="lmprof", native=True, max_new_tokens=2)
    with pytest.raises(UsageError, match="add --device cpu"):
        run_engine_profile(ProfileSession(instrument=False), request)
