"""`lmprof profile --engine lmprof`: the engine profiled as transformers is, on the tiny preset.

The profiled loop mirrors `lmprof.engine.generate` and the split load mirrors
`load_hf_folder`; both are checked against the engine's own functions so they cannot drift.
"""

from __future__ import annotations

import pytest
import torch

from lmprof.engine import EngineConfig, EngineOptions, cost, generate, load_hf_folder
from lmprof.errors import UsageError
from lmprof.record.run import load_run, validate_run_dict
from lmprof.session import ProfileSession
from lmprof.workloads.engine import engine_dtype, load_engine_model, profiled_generate
from lmprof.workloads.request import ProfileRequest

ENGINE_PHASES = [
    "import_torch", "import_transformers", "import_engine", "resolve", "load_model", "read_weights",
    "load_tokenizer", "tokenize", "generate", "prefill", "decode", "detokenize",
]  # fmt: skip


def test_profile_engine_writes_a_valid_run_with_its_phases(run_cli, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("profile", "tiny", "--engine", "lmprof", "--max-new-tokens", 6, "--out", out)
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    validate_run_dict(run.to_dict())
    assert run.status == "complete"
    # (Building the tiny preset on first use may add phases inside resolve.)
    names = [
        p.name for p in run.phases if p.parent_index is None or run.phases[p.parent_index].name != "resolve"
    ]
    assert [n for n in names if n in ENGINE_PHASES] == ENGINE_PHASES
    by_name = {p.name: (i, p) for i, p in enumerate(run.phases)}
    assert by_name["read_weights"][1].parent_index == by_name["load_model"][0]
    assert by_name["prefill"][1].parent_index == by_name["generate"][0]
    assert by_name["decode"][1].parent_index == by_name["generate"][0]
    assert by_name["read_weights"][1].payload_bytes > 0

    gen = run.generation
    assert gen.new_tokens == 6 and gen.batch_size == 1 and gen.call == "generate"
    assert len(gen.decode_step_latencies_s) == 5
    assert gen.prompt_tokens > 0 and gen.ttft_s > 0 and gen.decode_tokens_per_s > 0
    assert gen.first_token_s == pytest.approx(by_name["prefill"][1].end_s)
    assert sum(gen.decode_step_latencies_s) <= gen.decode_s + 1e-6
    assert gen.text is not None

    model = run.model
    assert model["engine"] == "lmprof" and model["engine_options"]["kv_cache"] == "static"
    assert model["source"] == "builtin" and model["id"] == "tiny"
    config = EngineConfig(**model["config"])
    assert model["parameter_count"] == cost.param_count(config)
    # fp32 parameters, the tied head counted once, plus the rotary frequencies buffer
    assert model["weight_bytes"] == 4 * model["parameter_count"] + 4 * config.head_dim // 2
    assert run.settings["engine"] == "lmprof"


def test_unknown_engine_is_a_usage_error():
    with pytest.raises(UsageError, match="--engine"):
        ProfileRequest(engine="vllm").validate()


@pytest.fixture
def session():
    s = ProfileSession(command=["test"]).start()
    yield s
    s.stop()


def test_split_load_and_profiled_loop_match_the_engine(tiny_model, session):
    # int8 + fused weights and a growing cache with chunked prefill: every mirrored step in play.
    options = EngineOptions(
        fuse_qkv=True, fuse_gate_up=True, int8=True, kv_cache="growing", prefill_chunk_size=3
    )
    profiled = load_engine_model(session, tiny_model, options, "cpu")
    reference = load_hf_folder(tiny_model, options)
    assert [p.name for p in session.phases.phases] == ["load_model", "read_weights", "prepare_weights"]
    tokens = torch.tensor([[5, 9, 2, 33, 7, 1, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(profiled(tokens), reference(tokens), rtol=0, atol=0)

    prompts = [[5, 9, 2, 33, 7, 1, 8], [40, 41, 42]]  # two lengths: the short one is left-padded
    gen, new_tokens = profiled_generate(session, profiled, prompts, 7, options)
    expected = generate(reference, prompts, 7, options=options)
    assert torch.equal(new_tokens, expected.tokens)
    assert gen.batch_size == 2 and gen.prompt_tokens == 7 and gen.new_tokens == 7
    assert len(gen.decode_step_latencies_s) == 6 and not gen.traced
    names = [p.name for p in session.phases.phases]
    assert names[-3:] == ["generate", "prefill", "decode"]


def test_dtype_auto_follows_the_checkpoint_where_profile_would(tiny_model):
    assert engine_dtype("float16", "cpu", False, tiny_model)[0] == "float16"
    assert engine_dtype("auto", "cpu", False, tiny_model)[0] == "float32"  # no native bf16: fp32
    stored = engine_dtype("auto", "cpu", True, tiny_model)[0]  # the checkpoint's own dtype
    assert stored in ("float32", "bfloat16", "float16")
