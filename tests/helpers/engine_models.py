"""Tiny random Llama and Qwen2 checkpoints for the engine's tests, built once per test module.

Every model is a few layers wide enough to use GQA, saved with save_pretrained and loaded both
ways in fp32. Weights are drawn larger than transformers' default init so logits have real
margins and greedy sequences do not collapse to one repeated token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 96
SMOLLM2_DIR = Path("/root/.cache/lmprof/models/smollm2-135m-instruct")
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    initializer_range=0.15,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
)


def _save(model: torch.nn.Module, folder: Path, **save_kwargs) -> Path:
    model.save_pretrained(folder, **save_kwargs)
    return folder


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("engine_models")
    llama3 = LlamaConfig(
        **COMMON, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False
    )
    llama_tied = LlamaConfig(
        **COMMON, num_key_value_heads=1, tie_word_embeddings=True, attention_bias=True, rms_norm_eps=1e-5
    )
    qwen2 = Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=False)
    return {
        "llama3-untied": _save(LlamaForCausalLM(llama3), root / "llama3"),
        "llama-tied-bias": _save(LlamaForCausalLM(llama_tied), root / "llama_tied"),
        "qwen2": _save(Qwen2ForCausalLM(qwen2), root / "qwen2"),
    }


@pytest.fixture(scope="module")
def wide_head_dirs(tmp_path_factory) -> dict[int, Path]:
    """Llama checkpoints with head sizes 64 and 128 (by head size), where the native step
    scores keys 16 at a time with the query in registers (kernels.h, attend_head_tiled); the
    models above have 16."""
    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("wide_heads")
    out = {}
    for head_dim in (64, 128):
        config = LlamaConfig(
            **{**COMMON, "hidden_size": 2 * head_dim, "num_attention_heads": 2}, num_key_value_heads=1
        )
        out[head_dim] = _save(LlamaForCausalLM(config), root / f"hd{head_dim}")
    return out


_HF_CACHE: dict[Path, torch.nn.Module] = {}


def hf_model(folder: Path) -> torch.nn.Module:
    if folder not in _HF_CACHE:
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
        _HF_CACHE[folder] = model.eval()
    return _HF_CACHE[folder]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def prompt(length: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


MODEL_NAMES = ["llama3-untied", "llama-tied-bias", "qwen2"]
