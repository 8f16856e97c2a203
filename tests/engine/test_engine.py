"""The engine against transformers on tiny random models built here (helpers/engine_models.py), plus
its cost model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.engine_models import (
    COMMON,
    MODEL_NAMES,
    SMOLLM2_DIR,
    VOCAB,
    _save,
    hf_model,
    prompt,
    rel_err,
)
from helpers.llama_gguf import llama_gguf_writer, write_llama_tensors
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lmprof.engine import (
    PRESETS,
    EngineConfig,
    EngineOptions,
    Transformer,
    cost,
    decode_step,
    generate,
    load_hf_folder,
    new_decode_state,
    prefill,
    sample,
)
from lmprof.engine.model import rope_inv_freq
from lmprof.engine.quant import Int8Linear
from lmprof.engine.step_timer import StepTimer
from lmprof.errors import ModelLoadError, UsageError

# ---- config ----


def test_config_reads_llama3_rope_and_qwen2_biases(model_dirs):
    llama = EngineConfig.from_hf_config(hf_model(model_dirs["llama3-untied"]).config.to_dict())
    assert llama.rope_theta == 500000.0 and llama.rope_scaling.factor == 8.0
    assert llama.rope_scaling.original_max_position_embeddings == 32
    assert (llama.n_kv_heads, llama.head_dim, llama.tie_embeddings) == (2, 16, False)
    qwen = EngineConfig.from_hf_config(hf_model(model_dirs["qwen2"]).config.to_dict())
    assert qwen.attention_bias and not qwen.o_proj_bias and qwen.rope_scaling is None
    tied = EngineConfig.from_hf_config(hf_model(model_dirs["llama-tied-bias"]).config.to_dict())
    assert tied.tie_embeddings and tied.attention_bias and tied.o_proj_bias


def test_config_reads_pre_v5_rope_format():
    old = {
        "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 4096,
        "rope_theta": 500000.0,
        "rope_scaling": {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    }  # fmt: skip
    config = EngineConfig.from_hf_config(old)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling.original_max_position_embeddings == 4096  # falls back to max positions
    with pytest.raises(ModelLoadError):
        EngineConfig.from_hf_config({**old, "model_type": "gpt2"})
    with pytest.raises(ModelLoadError):
        EngineConfig.from_hf_config({**old, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rope_frequencies_equal_transformers(model_dirs, name):
    hf = hf_model(model_dirs[name])
    config = EngineConfig.from_hf_config(hf.config.to_dict())
    assert torch.equal(rope_inv_freq(config), hf.model.rotary_emb.inv_freq)


# ---- logits parity ----


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("attention,gqa", [("naive", "repeat"), ("sdpa", "grouped"), ("naive", "grouped")])
def test_prefill_logits_match_transformers(model_dirs, name, attention, gqa):
    engine = load_hf_folder(model_dirs[name], EngineOptions(attention=attention, gqa=gqa))
    tokens = prompt(12, batch=2)
    with torch.no_grad():
        assert rel_err(engine(tokens), hf_model(model_dirs[name])(tokens).logits) < 1e-4


@pytest.mark.parametrize("kv_cache", ["off", "growing", "static"])
@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_decode_step_logits_match_transformers(model_dirs, kv_cache, attention):
    folder = model_dirs["llama3-untied"]
    engine = load_hf_folder(folder, EngineOptions(attention=attention))
    sequence = prompt(40)  # past the llama3 original context (32) so scaled frequencies matter
    with torch.no_grad():
        expected = hf_model(folder)(sequence).logits[0]  # [T, V]
        state = new_decode_state(engine, batch=1, capacity=40, kv_cache=kv_cache)
        logits = prefill(engine, state, sequence[:, :34])
        assert rel_err(logits[0], expected[33]) < 1e-4
        for t in range(34, 40):
            logits = decode_step(engine, state, sequence[:, t])
            assert rel_err(logits[0], expected[t]) < 1e-4


@pytest.mark.parametrize("kv_cache", ["growing", "static"])
def test_chunked_prefill_gives_the_same_logits(model_dirs, kv_cache):
    engine = load_hf_folder(model_dirs["qwen2"])
    tokens = prompt(11, batch=2)
    with torch.no_grad():
        whole = prefill(engine, new_decode_state(engine, 2, 16, kv_cache), tokens)
        state = new_decode_state(engine, 2, 16, kv_cache)
        chunked = prefill(engine, state, tokens, chunk_size=4)
        assert rel_err(chunked, whole) < 1e-5
        next_logits = decode_step(engine, state, chunked.argmax(-1))
        expected = hf_model(model_dirs["qwen2"])(torch.cat([tokens, chunked.argmax(-1)[:, None]], 1)).logits
        assert rel_err(next_logits, expected[:, -1]) < 1e-4


def test_fused_projections_give_the_same_logits(model_dirs):
    folder = model_dirs["qwen2"]  # q/k/v biases must be fused too
    plain = load_hf_folder(folder)
    fused = load_hf_folder(folder, EngineOptions(fuse_qkv=True, fuse_gate_up=True))
    attention, mlp = fused.layers[0].attention, fused.layers[0].mlp
    assert attention.q_proj is None and attention.qkv_proj.weight.shape == (64 + 2 * 32, 64)
    assert mlp.gate_proj is None and mlp.gate_up_proj.weight.shape == (2 * 96, 64)
    tokens = prompt(9, batch=2)
    with torch.no_grad():
        assert rel_err(fused(tokens), plain(tokens)) < 1e-5


@pytest.mark.parametrize("name", ["llama-tied-bias", "qwen2"])
def test_column_major_weights_give_the_same_logits(model_dirs, name):
    plain = load_hf_folder(model_dirs[name])
    column = load_hf_folder(model_dirs[name], EngineOptions(column_major=True, fuse_qkv=True))
    weight = column.layers[0].mlp.down_proj.weight
    assert weight.shape == (64, 96) and weight.stride() == (1, 64)
    assert column.lm_head.weight is column.embed_tokens.weight or not column.config.tie_embeddings
    tokens = prompt(9, batch=2)
    with torch.no_grad():
        assert rel_err(column(tokens), plain(tokens)) < 1e-5
    assert generate(column, tokens, 6).tokens.tolist() == generate(plain, tokens, 6).tokens.tolist()


# ---- generation ----


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_greedy_tokens_equal_transformers_generate(model_dirs, name):
    hf = hf_model(model_dirs[name])
    engine = load_hf_folder(model_dirs[name])
    tokens = prompt(7, seed=3)
    expected = hf.generate(tokens, do_sample=False, min_new_tokens=20, max_new_tokens=20)[:, 7:]
    result = generate(engine, tokens, max_new_tokens=20)
    assert result.tokens.tolist() == expected.tolist()
    assert len(set(expected[0].tolist())) > 3  # a real sequence, not one token repeated


@pytest.mark.parametrize("kv_cache", ["off", "growing", "static"])
def test_batched_left_padded_generation_equals_one_by_one(model_dirs, kv_cache):
    engine = load_hf_folder(model_dirs["llama3-untied"], EngineOptions(kv_cache=kv_cache))
    prompts = [prompt(n, seed=n)[0].tolist() for n in (3, 9, 6)]
    batched = generate(engine, prompts, max_new_tokens=12, pad_token_id=0)
    for row, single_prompt in enumerate(prompts):
        alone = generate(engine, [single_prompt], max_new_tokens=12)
        assert batched.tokens[row].tolist() == alone.tokens[0].tolist()


def test_each_row_stops_at_its_own_eos(model_dirs):
    engine = load_hf_folder(model_dirs["llama-tied-bias"])
    prompts = [prompt(n, seed=10 + n)[0].tolist() for n in (4, 8)]
    free = generate(engine, prompts, max_new_tokens=10)
    eos = free.tokens[0, 2].item()  # row 0 emits this token third; make it the eos
    assert eos not in free.tokens[1, :5].tolist(), "pick another seed: row 1 would stop early too"
    stopped = generate(engine, prompts, max_new_tokens=10, eos_token_id=[eos], pad_token_id=VOCAB - 1)
    first_eos_row1 = next((i for i, t in enumerate(free.tokens[1].tolist()) if t == eos), 10)
    assert stopped.tokens[0, :3].tolist() == free.tokens[0, :3].tolist()
    assert stopped.tokens[0, 3:].eq(VOCAB - 1).all()  # padded after eos
    assert stopped.tokens[1, : first_eos_row1 + 1].tolist() == free.tokens[1, : first_eos_row1 + 1].tolist()
    assert stopped.sequences(eos)[0] == free.tokens[0, :3].tolist()
    assert stopped.finished[0]


def test_generation_stops_when_every_row_has_finished(model_dirs):
    engine = load_hf_folder(model_dirs["qwen2"])
    free = generate(engine, prompt(5), max_new_tokens=8)
    eos = free.tokens[0, 1].item()
    stopped = generate(engine, prompt(5), max_new_tokens=8, eos_token_id=eos)
    assert stopped.tokens.shape == (1, 2) and len(stopped.decode_step_s) == 1


def test_generate_builds_its_state_and_runs_under_inference_mode(model_dirs, monkeypatch):
    # The KV cache and every step's tensors carry no autograd bookkeeping: generate() enters
    # inference mode before it makes the decode state, not only around the loop.
    import importlib

    generate_module = importlib.import_module("lmprof.engine.generate")  # the package exports generate()
    seen = []
    make_state = generate_module.new_decode_state

    def recording(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return make_state(*args, **kwargs)

    monkeypatch.setattr(generate_module, "new_decode_state", recording)
    result = generate(load_hf_folder(model_dirs["llama-tied-bias"]), prompt(5), max_new_tokens=3)
    assert seen == [True] and result.tokens.is_inference()


def test_sampling_top_k_1_is_greedy_and_seeded_sampling_repeats(model_dirs):
    engine = load_hf_folder(model_dirs["qwen2"])
    greedy = generate(engine, prompt(5), max_new_tokens=10)
    top1 = generate(engine, prompt(5), max_new_tokens=10, temperature=0.8, top_k=1)
    assert top1.tokens.tolist() == greedy.tokens.tolist()
    runs = [
        generate(engine, prompt(5), 10, temperature=1.5, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert runs[0].tokens.tolist() == runs[1].tokens.tolist()
    assert runs[0].tokens.tolist() != greedy.tokens.tolist()


def test_sample_top_k_keeps_only_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 4.5]])
    draws = {
        sample(logits, 10.0, top_k=2, generator=torch.Generator().manual_seed(s)).item() for s in range(50)
    }
    assert draws == {1, 4}


def test_timings_come_from_the_injected_clock(model_dirs):
    engine = load_hf_folder(model_dirs["qwen2"])
    ticks = iter(range(0, 1000, 2))  # every reading is 2 s after the previous one
    result = generate(engine, prompt(4), max_new_tokens=5, clock=lambda: float(next(ticks)))
    assert result.prefill_s == 2.0
    assert result.decode_step_s == [2.0] * 4
    assert result.decode_tokens_per_s == pytest.approx(0.5)


def test_step_timer_on_cpu_measures_host_time():
    clock_values = iter([1.0, 1.25, 3.0, 3.5])
    timer = StepTimer(torch.device("cpu"), clock=lambda: next(clock_values))
    for _ in range(2):
        timer.start()
        timer.stop()
    assert timer.durations_s() == [0.25, 0.5]


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError):
        EngineOptions(kv_cache="paged")
    with pytest.raises(UsageError):
        EngineOptions(kv_cache="off", prefill_chunk_size=4)
    with pytest.raises(UsageError):
        EngineOptions(compile_decode=True, kv_cache="growing")


# ---- dtypes and int8 ----


def test_int8_weights_agree_with_fp32_on_most_greedy_tokens(model_dirs):
    folder = model_dirs["llama-tied-bias"]
    fp32 = load_hf_folder(folder)
    int8 = load_hf_folder(folder, EngineOptions(int8=True))
    assert isinstance(int8.lm_head, Int8Linear) and isinstance(int8.layers[1].mlp.down_proj, Int8Linear)
    tokens = prompt(64, seed=5)
    with torch.no_grad():
        full, quantized = fp32(tokens)[0], int8(tokens)[0]
    # Teacher-forced greedy choice at every position (free-running, one flip changes all later tokens).
    agreement = (full.argmax(-1) == quantized.argmax(-1)).float().mean().item()
    assert agreement >= 0.85, agreement
    assert rel_err(quantized, full) < 0.1
    # int8 free-running greedy tokens: fp32, given the same prefix, would mostly pick them too.
    generated = generate(int8, tokens[:, :8], 24).tokens  # [1, 24]
    with torch.no_grad():
        fp32_choice = fp32(torch.cat([tokens[:, :8], generated], dim=1))[0, 7:-1].argmax(-1)
    assert (fp32_choice == generated[0]).float().mean().item() >= 0.75


def test_int8_linear_matches_dequantized_matmul():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24)
    q = Int8Linear.from_linear(linear)
    x = torch.randn(3, 48)
    dequantized = q.weight.float() * q.scales.float()[:, None]
    assert rel_err(q(x), x @ dequantized.T + linear.bias) < 1e-2  # bf16 activations inside the kernel
    assert rel_err(dequantized, linear.weight) < 1e-2


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_logits_are_close(model_dirs, dtype):
    folder = model_dirs["llama3-untied"]
    engine = load_hf_folder(folder, EngineOptions(dtype=dtype))
    assert engine.layers[0].attention.q_proj.weight.dtype == getattr(torch, dtype)
    tokens = prompt(10)
    with torch.no_grad():
        assert rel_err(engine(tokens).float(), hf_model(folder)(tokens).logits) < 5e-2


# ---- loading ----


def test_sharded_checkpoint_loads_and_tied_head_shares_the_embedding(model_dirs, tmp_path):
    hf = hf_model(model_dirs["llama-tied-bias"])
    sharded = _save(hf, tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    engine = load_hf_folder(sharded)
    assert engine.lm_head.weight is engine.embed_tokens.weight
    tokens = prompt(6)
    with torch.no_grad():
        assert rel_err(engine(tokens), hf(tokens).logits) < 1e-4


def _write_llama_gguf(hf: torch.nn.Module, path: Path) -> None:
    """An fp32 GGUF as llama.cpp writes it: its own tensor names, q/k rows permuted per head."""
    writer = llama_gguf_writer(path, hf.config)
    writer.add_name("tiny")
    write_llama_tensors(writer, hf)


def test_folder_with_only_a_gguf_loads_through_transformers(tmp_path):
    torch.manual_seed(2)
    config = LlamaConfig(**{**COMMON, "rms_norm_eps": 1e-5}, num_key_value_heads=2, tie_word_embeddings=False)
    hf = LlamaForCausalLM(config).eval()
    _write_llama_gguf(hf, tmp_path / "tiny.gguf")
    engine = load_hf_folder(tmp_path)
    tokens = prompt(8)
    with torch.no_grad():
        assert rel_err(engine(tokens), hf(tokens).logits) < 1e-4


def test_missing_weights_are_a_load_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        load_hf_folder(tmp_path)


# ---- analytic cost ----


def _unique_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()] if t is not model.inv_freq}
    return list(tensors.values())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_count_and_weight_bytes_match_the_built_model(model_dirs, name):
    engine = load_hf_folder(model_dirs[name])
    config = engine.config
    hf_params = sum(p.numel() for p in hf_model(model_dirs[name]).parameters())
    assert cost.param_count(config) == sum(t.numel() for t in _unique_tensors(engine)) == hf_params
    assert cost.weight_bytes(config, "float32") == 4 * hf_params
    int8 = load_hf_folder(model_dirs[name], EngineOptions(int8=True))
    assert cost.weight_bytes(config, "int8") == sum(
        t.numel() * t.element_size() for t in _unique_tensors(int8)
    )


def test_kv_bytes_per_token_matches_the_static_cache(model_dirs):
    engine = load_hf_folder(model_dirs["llama3-untied"])
    config = engine.config
    assert cost.kv_bytes_per_token(config) == 2 * config.n_layers * config.n_kv_heads * config.head_dim * 4
    state = new_decode_state(engine, batch=1, capacity=10, kv_cache="static")
    cache_bytes = sum(t.numel() * t.element_size() for t in state.cache.tensors())
    assert cache_bytes == 10 * cost.kv_bytes_per_token(config)


def test_decode_flops_match_a_flop_counter(model_dirs):
    from torch.utils.flop_counter import FlopCounterMode

    engine = load_hf_folder(model_dirs["llama3-untied"], EngineOptions(attention="naive", kv_cache="growing"))
    state = new_decode_state(engine, 1, 0, "growing")
    with torch.no_grad():
        logits = prefill(engine, state, prompt(15))
        with FlopCounterMode(display=False) as counter:
            decode_step(engine, state, logits.argmax(-1))
    assert counter.get_total_flops() == cost.decode_flops(engine.config, context_len=16)


def test_prefill_flops_match_a_flop_counter_without_the_causal_saving(model_dirs):
    from torch.utils.flop_counter import FlopCounterMode

    engine = load_hf_folder(model_dirs["qwen2"], EngineOptions(attention="naive"))
    config, T = engine.config, 10
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        engine(prompt(T), last_only=True)
    # The naive kernel multiplies the full T x T score matrix; the analytic count skips the masked half.
    masked_half = cost.attention_flops(config, T * T) - cost.attention_flops(config, T * (T + 1) // 2)
    assert counter.get_total_flops() == cost.prefill_flops(config, T) + masked_half


def test_preset_sizes_match_published_parameter_counts():
    assert cost.param_count(PRESETS["smollm2-135m"]) == 134_515_008
    assert cost.param_count(PRESETS["llama-3.2-1b"]) == 1_235_814_400
    assert cost.param_count(PRESETS["llama-3.1-8b"]) == 8_030_261_248
    assert cost.param_count(PRESETS["qwen2.5-0.5b"]) == 494_032_768
    assert cost.param_count(PRESETS["tinyllama-1.1b"]) == 1_100_048_384
    assert cost.kv_bytes_per_token(PRESETS["llama-3.1-8b"], "bfloat16") == 131_072


def test_decode_bytes_and_floor():
    config = PRESETS["tiny"]
    weights = cost.decode_weight_bytes(config, "float32")
    assert weights == cost.weight_bytes(config, "float32")  # tied: the head reads the whole table
    untied = EngineConfig(**{**config.__dict__, "tie_embeddings": False})
    assert cost.decode_weight_bytes(untied) == cost.weight_bytes(untied) - 4 * config.vocab_size * 64
    per_step = cost.decode_bytes_per_step(config, context_len=100, batch=2)
    assert per_step == weights + 2 * 100 * cost.kv_bytes_per_token(config)
    assert cost.decode_floor_s(weights, 1e9) == pytest.approx(weights / 1e9)
    Transformer(config)  # the preset builds


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_tokens(model_dirs):
    folder = model_dirs["llama3-untied"]
    plain = generate(load_hf_folder(folder), prompt(6), 10)
    compiled = generate(load_hf_folder(folder, EngineOptions(compile_decode=True)), prompt(6), 10)
    assert compiled.tokens.tolist() == plain.tokens.tolist()


# ---- a real trained model, when another job has converted it ----


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2_DIR.is_dir(), reason=f"{SMOLLM2_DIR} not present")
def test_smollm2_135m_matches_transformers():
    hf = AutoModelForCausalLM.from_pretrained(SMOLLM2_DIR, attn_implementation="eager", dtype=torch.float32)
    engine = load_hf_folder(SMOLLM2_DIR)
    tokens = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 1345, 28, 2114, 6185, 30]])
    with torch.no_grad():
        assert rel_err(engine(tokens), hf(tokens).logits) < 1e-4
    expected = hf.generate(tokens, do_sample=False, min_new_tokens=24, max_new_tokens=24)[
        :, tokens.shape[1] :
    ]
    assert generate(engine, tokens, 24).tokens.tolist() == expected.tolist()
    # int8 greedy tokens: the fp32 engine, given the same prefix, would mostly pick them too.
    int8 = load_hf_folder(SMOLLM2_DIR, EngineOptions(int8=True))
    generated = generate(int8, tokens, 24).tokens
    with torch.no_grad():
        fp32_choice = engine(torch.cat([tokens, generated], dim=1))[0, tokens.shape[1] - 1 : -1].argmax(-1)
    assert (fp32_choice == generated[0]).float().mean().item() >= 0.8
