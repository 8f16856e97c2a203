"""lmprof's native decode step (engine/native/decode_step.cpp) against transformers and the
engine's own torch path, on the tiny checkpoints of helpers/engine_models.py.

The kernels are compiled once per test session (conftest sets LMPROF_NATIVE_BUILD); `lmprof
profile --native` is tested in test_profile_native.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers.engine_models import MODEL_NAMES, hf_model, prompt, rel_err

from lmprof.ablation.plan import plan_rows
from lmprof.engine import EngineOptions, decode_step, generate, load_hf_folder, new_decode_state, prefill
from lmprof.engine import native as native_build
from lmprof.engine.native import NativeKernelsUnavailable, cpu_has_w8a8, load_native_ops
from lmprof.engine.native_decode import check_native_decode, layer_weights
from lmprof.engine.quant import Int8Linear, quantize_per_channel
from lmprof.errors import UsageError

NATIVE = EngineOptions(native_decode=True)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("fused", [False, True])
def test_native_decode_logits_match_transformers(model_dirs, ops, name, fused):
    folder = model_dirs[name]
    engine = load_hf_folder(folder, EngineOptions(native_decode=True, fuse_qkv=fused, fuse_gate_up=fused))
    sequence = prompt(40, seed=5, batch=2)  # llama3-untied: past the original context (32)
    with torch.no_grad():
        expected = hf_model(folder)(sequence).logits  # [2, T, V]
        state = new_decode_state(engine, batch=2, capacity=40, kv_cache="static")
        prefill(engine, state, sequence[:, :30])
        for t in range(30, 40):
            logits = decode_step(engine, state, sequence[:, t], native=True)
            assert rel_err(logits, expected[:, t]) < 1e-4


def test_native_step_writes_the_same_kv_cache_as_the_torch_step(model_dirs, ops):
    folder = model_dirs["qwen2"]  # q/k/v biases reach the cache
    engine = load_hf_folder(folder, NATIVE)
    tokens = prompt(9, batch=2)
    states = [new_decode_state(engine, 2, 12, "static") for _ in range(2)]
    with torch.no_grad():
        for state, native in zip(states, (False, True)):
            prefill(engine, state, tokens[:, :6])
            for t in range(6, 9):
                decode_step(engine, state, tokens[:, t], native=native)
    for torch_k, native_k in zip(states[0].cache.tensors(), states[1].cache.tensors()):
        assert rel_err(native_k, torch_k) < 1e-5
        assert native_k[:, :, 6:9].abs().sum() > 0  # the decode steps' slots were written


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_native_greedy_tokens_equal_transformers_generate(model_dirs, ops, name):
    tokens = prompt(7, seed=3)
    expected = hf_model(model_dirs[name]).generate(
        tokens, do_sample=False, min_new_tokens=20, max_new_tokens=20
    )
    result = generate(load_hf_folder(model_dirs[name], NATIVE), tokens, max_new_tokens=20)
    assert result.tokens.tolist() == expected[:, 7:].tolist()
    assert len(result.decode_step_s) == 19


def test_native_batched_left_padded_generation_equals_one_by_one(model_dirs, ops):
    engine = load_hf_folder(model_dirs["llama-tied-bias"], NATIVE)
    prompts = [prompt(n, seed=n)[0].tolist() for n in (3, 9, 6, 2, 5)]  # odd batch: the unpaired-row path
    batched = generate(engine, prompts, max_new_tokens=12, pad_token_id=0)
    for row, single in enumerate(prompts):
        alone = generate(engine, [single], max_new_tokens=12, options=EngineOptions())  # the torch path
        assert batched.tokens[row].tolist() == alone.tokens[0].tolist()


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 8, 9, 16])  # from 4 (AVX2) or 8 (AVX-512): row triples
@pytest.mark.parametrize("out_features", [4, 37, 1000])  # rows left over from the triples or pairs, and none
@pytest.mark.parametrize("tile_rows", [0, 1, 2, 3])  # as the decode step picks, singles, pairs, triples
def test_native_linear_matches_f_linear(ops, batch, out_features, tile_rows):
    generator = torch.Generator().manual_seed(batch * out_features)
    x = torch.randn(batch, 96, generator=generator)
    weight = torch.randn(out_features, 96, generator=generator)
    bias = torch.randn(out_features, generator=generator)
    assert rel_err(ops.linear(x, weight, bias, tile_rows=tile_rows), F.linear(x, weight, bias)) < 1e-5
    assert rel_err(ops.linear(x, weight, tile_rows=tile_rows), F.linear(x, weight)) < 1e-5


# 100 = 6 x 16 + 4: whole iterations of the k_steps() unroll, then single floats; 120 = 64 +
# 3 x 16 + 8 (3 x 32 + 3 x 8 with AVX2): single vector steps after the unrolled ones. Batch 9
# ends in a one-row tile, which takes 4 (pairs, singles) or 2 (triples) steps an iteration.
@pytest.mark.parametrize("in_features", [100, 120])
@pytest.mark.parametrize("tile_rows", [1, 2, 3])
def test_native_linear_reads_a_row_length_off_the_vector_width(ops, tile_rows, in_features):
    generator = torch.Generator().manual_seed(3)
    x, weight = (
        torch.randn(9, in_features, generator=generator),
        torch.randn(40, in_features, generator=generator),
    )
    assert rel_err(ops.linear(x, weight, tile_rows=tile_rows), F.linear(x, weight)) < 1e-5
    w_int8, scales = quantize_per_channel(weight)
    dequantized = w_int8.float() * scales.float()[:, None]
    assert rel_err(ops.linear(x, w_int8, None, scales.float(), tile_rows), F.linear(x, dequantized)) < 1e-5


@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 100, 4099])  # under, at and over one vector; a tail
def test_native_argmax_rows_is_torch_argmax(ops, vocab):
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=generator)
    logits[1] = 1.0  # all tied: the first
    logits[2] = float("-inf")
    if vocab > 3:
        logits[3, vocab // 3] = logits[3, vocab - 1] = 1e9  # a tie of two maxima in different lanes
        logits[4, 2] = logits[4, vocab - 2] = float("nan")  # NaN wins, the first one
    assert ops.argmax_rows(logits).tolist() == logits.argmax(-1).tolist()


def test_native_greedy_sampling_uses_the_native_picks(model_dirs, ops, monkeypatch):
    calls = []
    for name in ("argmax_rows", "pick_greedy"):
        real = getattr(ops, name)
        monkeypatch.setattr(
            ops, name, lambda *a, _n=name, _r=real: calls.append((_n, a[0].shape)) or _r(*a), raising=False
        )
    result = generate(load_hf_folder(model_dirs["qwen2"], NATIVE), prompt(5, batch=2), max_new_tokens=4)
    # the prefill's pick, then three decode steps' picks with padding and the eos check
    assert calls == [("argmax_rows", (2, 96))] + [("pick_greedy", (2, 96))] * 3
    assert result.tokens.shape == (2, 4)


def test_native_pick_greedy_is_the_torch_loops_pick(ops):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=generator)
    logits[1] = 1.0  # all tied: the first
    logits[2, 7] = float("nan")
    eos = torch.tensor([int(logits[3].argmax()), int(logits[4].argmax())])
    before = torch.tensor([False, False, False, False, True, True])  # rows 4 and 5 had finished
    expected_tokens = torch.where(before, 9, logits.argmax(-1))
    expected_finished = before | torch.isin(expected_tokens, eos)
    finished = before.clone()
    tokens = ops.pick_greedy(logits, finished, eos, 9)
    assert tokens.tolist() == expected_tokens.tolist()
    assert finished.tolist() == expected_finished.tolist() == [False, False, False, True, True, True]
    assert ops.pick_greedy(logits, finished, torch.empty(0, dtype=torch.long), 9)[:3].tolist() == (
        logits[:3].argmax(-1).tolist()
    )  # no eos: nothing more finishes


def _w8a8_reference(x, w_int8, scales, bias):
    """The W8A8 product in float64: each row of x quantized as the kernel does."""
    amax = x.abs().amax(dim=1, keepdim=True)
    x_scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(x * (1 / x_scale))
    return ((q.double() @ w_int8.double().t()) * x_scale.double() * scales.double() + bias.double()).float()


@pytest.mark.parametrize("batch", [1, 3, 8, 9])
@pytest.mark.parametrize("in_features", [64, 100, 576])  # a multiple of 64, a tail, the default model's
def test_native_w8a8_linear_is_the_quantized_product(ops, needs_w8a8, batch, in_features):
    generator = torch.Generator().manual_seed(batch * in_features)
    x = torch.randn(batch, in_features, generator=generator)
    x[0] = 0.0  # an all-zero row: scale 1, every product 0
    weight, bias = torch.randn(37, in_features, generator=generator), torch.randn(37, generator=generator)
    w_int8, scales = quantize_per_channel(weight)
    with_row_sums = torch.cat([scales.float(), w_int8.sum(dim=1).float()])
    got = ops.linear(x, w_int8, bias, with_row_sums)
    assert rel_err(got, _w8a8_reference(x, w_int8, scales.float(), bias)) < 1e-5
    assert torch.allclose(got[0], bias)


def test_native_w8a8_decode_quantizes_activations_and_stays_close(model_dirs, ops, needs_w8a8):
    folder = model_dirs["qwen2"]  # biases on q/k/v
    switches = dict(int8=True, native_decode=True, fuse_qkv=True)
    weight_only = load_hf_folder(folder, EngineOptions(**switches))
    w8a8 = load_hf_folder(folder, EngineOptions(**switches, int8_activations=True))
    tokens = prompt(12, seed=4, batch=2)
    states = [new_decode_state(m, 2, 13, "static") for m in (weight_only, w8a8)]
    with torch.no_grad():
        for model, state in zip((weight_only, w8a8), states):
            prefill(model, state, tokens[:, :8])
        for t in range(8, 12):
            expected = decode_step(weight_only, states[0], tokens[:, t], native=True)
            got = decode_step(w8a8, states[1], tokens[:, t], native=True)
            assert not torch.equal(got, expected)  # the activations really were quantized
            assert rel_err(got, expected) < 0.05  # by one part in 127 per row
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as trace:
            decode_step(w8a8, states[1], tokens[:, 11], native=True)
    names = [event.name for event in trace.events()]
    projections = 5 * len(w8a8.layers) + 1  # fused qkv, o, gate, up, down a layer; the head
    assert (
        names.count("lmprof_native::matvec_w8a8") == projections and "lmprof_native::matvec_int8" not in names
    )
    result = generate(w8a8, prompt(5, batch=2), max_new_tokens=6)
    assert result.tokens.shape == (2, 6)


def test_w8a8_needs_int8_and_the_native_step_and_vnni(model_dirs, monkeypatch):
    for switches in ({"int8": True}, {"native_decode": True}):
        with pytest.raises(UsageError, match="needs int8 and native_decode"):
            EngineOptions(int8_activations=True, **switches)
    import lmprof.engine.native as native_module

    monkeypatch.setattr(native_module, "cpu_has_w8a8", lambda: False)
    model = load_hf_folder(
        model_dirs["qwen2"], EngineOptions(int8=True, native_decode=True, int8_activations=True)
    )
    with pytest.raises(UsageError, match="AVX2 or AVX512-VNNI"):
        check_native_decode(model)


def test_native_linear_rejects_an_unknown_tile(ops):
    with pytest.raises(RuntimeError, match="tile_rows must be 0"):
        ops.linear(torch.randn(1, 16), torch.randn(4, 16), tile_rows=4)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_native_wide_heads_match_transformers_at_batch_8(wide_head_dirs, ops, head_dim):
    folder = wide_head_dirs[head_dim]
    engine = load_hf_folder(folder, EngineOptions(native_decode=True, fuse_qkv=True, fuse_gate_up=True))
    sequence = prompt(
        41, seed=head_dim, batch=8
    )  # 8 rows: row triples; 41 keys: full blocks of 16 (AVX-512) or 8 (AVX2) and a tail
    with torch.no_grad():
        expected = hf_model(folder)(sequence).logits
        state = new_decode_state(engine, batch=8, capacity=41, kv_cache="static")
        prefill(engine, state, sequence[:, :14])
        for t in range(14, 41):
            assert rel_err(decode_step(engine, state, sequence[:, t], native=True), expected[:, t]) < 1e-4


def test_native_wide_heads_left_padded_batch_equals_one_by_one(wide_head_dirs, ops):
    engine = load_hf_folder(wide_head_dirs[64], NATIVE)
    lengths = (
        3,
        19,
        6,
        2,
        17,
        9,
        1,
        12,
        5,
    )  # 9 rows: a triple tile of 8 and one of 1; padding across key blocks
    prompts = [prompt(n, seed=n)[0].tolist() for n in lengths]
    batched = generate(engine, prompts, max_new_tokens=14, pad_token_id=0)
    for row, single in enumerate(prompts):
        alone = generate(engine, [single], max_new_tokens=14, options=EngineOptions())  # the torch path
        assert batched.tokens[row].tolist() == alone.tokens[0].tolist()


@pytest.mark.parametrize("distance", [64, 4096, 1 << 20])  # a line, the Zen 5 entry, past any weight's end
@pytest.mark.parametrize("batch", [1, 8])  # narrow tiles (the default: none) and wide (the rows ahead)
def test_prefetch_changes_no_product(ops, distance, batch):
    generator = torch.Generator().manual_seed(distance)
    x, weight = torch.randn(batch, 576, generator=generator), torch.randn(37, 576, generator=generator)
    w_int8, scales = quantize_per_channel(weight)
    calls = [lambda t=t: ops.linear(x, weight, None, None, t) for t in (1, 2, 3)]
    calls.append(lambda: ops.linear(x, w_int8, None, scales.float()))
    if cpu_has_w8a8():
        calls.append(
            lambda: ops.linear(x, w_int8, None, torch.cat([scales.float(), w_int8.sum(dim=1).float()]))
        )
    previous = ops.set_prefetch(0, 0)
    assert ops.prefetch() == [0, 0]
    try:
        expected = [call() for call in calls]
        for narrow, wide in [(distance, distance), (distance, 0), (0, distance)]:
            assert ops.set_prefetch(narrow, wide) is not None and ops.prefetch() == [narrow, wide]
            assert all(torch.equal(call(), want) for call, want in zip(calls, expected))
    finally:
        ops.set_prefetch(*previous)
    with pytest.raises(RuntimeError, match="must be >= 0"):
        ops.set_prefetch(-1, 0)


def test_loading_the_kernels_sets_the_cpus_prefetch_distances(ops, lmprof_cache):
    # In a fresh process, as every run loads them: the environment's override reaches the kernels.
    code = "from lmprof.engine.native import load_native_ops; print(*load_native_ops().prefetch())"
    env = dict(os.environ, LMPROF_PREFETCH_BYTES="1234,4321", LMPROF_CACHE=str(lmprof_cache))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["1234", "4321"]


def test_native_int8_linear_is_the_dequantized_product(ops):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(37, 96, generator=generator)
    w_int8, scales = quantize_per_channel(weight)
    x, bias = torch.randn(3, 96, generator=generator), torch.randn(37, generator=generator)
    dequantized = w_int8.float() * scales.float()[:, None]
    assert rel_err(ops.linear(x, w_int8, bias, scales.float()), F.linear(x, dequantized, bias)) < 1e-5


@pytest.mark.parametrize("name", ["llama-tied-bias", "qwen2"])  # a tied int8 head; q/k/v biases
def test_native_int8_decode_matches_fp32_on_the_dequantized_weights(model_dirs, ops, name):
    folder = model_dirs[name]
    int8 = load_hf_folder(folder, EngineOptions(int8=True, native_decode=True, fuse_qkv=True))
    reference = load_hf_folder(folder, EngineOptions(fuse_qkv=True))
    reference_linears = dict(reference.named_modules())
    for path, module in int8.named_modules():
        if isinstance(module, Int8Linear):
            dequantized = module.weight.float() * module.scales.float()[:, None]
            reference_linears[path].weight.data.copy_(dequantized)
    tokens = prompt(12, seed=2, batch=2)
    states = [new_decode_state(m, 2, 12, "static") for m in (int8, reference)]
    with torch.no_grad():
        for state in states:
            prefill(reference, state, tokens[:, :8])  # the same cache to start from
        for t in range(8, 12):
            native = decode_step(int8, states[0], tokens[:, t], native=True)
            expected = decode_step(reference, states[1], tokens[:, t])
            assert rel_err(native, expected) < 1e-4


def test_native_linear_rejects_a_transposed_weight(ops):
    with pytest.raises(RuntimeError, match="checkpoint layout"):
        ops.linear(torch.randn(1, 8), torch.randn(8, 4).t())


def test_native_step_nests_its_kernels_in_the_module_ranges_of_the_profiler(model_dirs, ops):
    engine = load_hf_folder(model_dirs["llama3-untied"], NATIVE)
    state = new_decode_state(engine, 1, 8, "static")
    with torch.no_grad():
        prefill(engine, state, prompt(5))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            decode_step(engine, state, prompt(1)[:, 0], native=True)
    names = {e.name for e in prof.events()}
    for path in ("layers.0.attention", "layers.1.mlp.down_proj", "layers.1.attention.q_proj", "lm_head"):
        assert f"module:{path}" in names
    assert {"lmprof_native::matvec", "lmprof_native::attention", "lmprof_native::rms_norm"} <= names
    matvecs = [e for e in prof.events() if e.name == "lmprof_native::matvec"]
    # q, k, v, o, gate, up, down in 2 layers, then the head
    assert len(matvecs) == 7 * 2 + 1


def test_native_options_that_cannot_combine_are_usage_errors():
    for bad in (
        {"dtype": "bfloat16"},
        {"column_major": True},
        {"kv_cache": "growing"},
        {"compile_decode": True},
    ):
        with pytest.raises(UsageError, match="native_decode"):
            EngineOptions(native_decode=True, **bad)


def test_a_model_the_native_step_cannot_read_is_a_usage_error(model_dirs):
    column = load_hf_folder(model_dirs["qwen2"], EngineOptions(column_major=True))
    with pytest.raises(UsageError, match="checkpoint-layout"):
        check_native_decode(column)
    bf16 = load_hf_folder(model_dirs["qwen2"], EngineOptions(dtype="bfloat16"))
    with pytest.raises(UsageError, match="float32 activations"):
        generate(bf16, prompt(4), 3, options=NATIVE)


def test_layer_weights_are_the_models_own_tensors(model_dirs):
    engine = load_hf_folder(model_dirs["qwen2"], EngineOptions(fuse_qkv=True))
    weights = layer_weights(engine)
    assert len(weights) == 23 * engine.config.n_layers
    attention = engine.layers[0].attention
    assert weights[1] is attention.qkv_proj.weight and weights[2] is attention.qkv_proj.bias
    assert weights[3].numel() == 0  # float weights: no scales
    assert weights[4].numel() == 0 and weights[7].numel() == 0  # k and v live in the fused matrix


def test_missing_compiler_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LMPROF_NATIVE_BUILD", str(tmp_path))
    monkeypatch.setattr(native_build, "_LOADED", {})
    monkeypatch.setattr(native_build.shutil, "which", lambda name: None)
    with pytest.raises(NativeKernelsUnavailable, match="C\\+\\+ compiler .* and ninja"):
        load_native_ops()


def test_build_key_follows_the_source(monkeypatch, tmp_path):
    key = native_build.build_key()
    changed = tmp_path / "decode_step.cpp"
    changed.write_text(native_build.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(native_build, "SOURCE", changed)
    assert native_build.build_key() != key


def test_ablation_plan_has_the_native_row_or_says_why_not():
    rows = {r.name: r for r in plan_rows(threads=2, logical_cores=2, prompt_tokens=32)}
    assert rows["native"].options == {"native_decode": True} and rows["native"].skip_reason is None
    why = "lmprof's native decode kernels need ninja"
    skipped = {
        r.name: r for r in plan_rows(threads=2, logical_cores=2, prompt_tokens=32, native_unavailable=why)
    }
    assert skipped["native"].skip_reason == why
