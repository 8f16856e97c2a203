"""The engine's one config dataclass: architecture numbers, named presets, and reading a HF config.json.

Only what changes the computation is kept. `from_hf_config` follows transformers 5.x
(`modeling_rope_utils.RotaryEmbeddingConfigMixin`): rope settings live in `rope_parameters`
(older files: top-level `rope_theta` plus `rope_scaling`), and the llama3 rope type takes
`original_max_position_embeddings` from the top level first, then the rope dict, then
`max_position_embeddings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmprof.errors import ModelLoadError, ModelNotFoundError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
DEFAULT_ROPE_THETA = 10_000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 ("llama3" rope type) frequency scaling: long wavelengths are stretched by `factor`."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class EngineConfig:
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = DEFAULT_ROPE_THETA
    rope_scaling: RopeScaling | None = None
    tie_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v (Qwen2; Llama with attention_bias=True)
    o_proj_bias: bool = False  # Llama's attention_bias also puts a bias on o_proj; Qwen2's does not
    mlp_bias: bool = False
    max_seq_len: int = 2048

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def n_groups(self) -> int:
        """Query heads that share one K/V head."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_preset(cls, name: str) -> EngineConfig:
        if name not in PRESETS:
            raise ModelNotFoundError(f"no engine preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return PRESETS[name]

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> EngineConfig:
        """Read a Hugging Face config.json (already parsed) for a llama or qwen2 model."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"model_type {model_type!r} is not supported by the engine (supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
        if model_type == "qwen2" and hf.get("use_sliding_window", False):
            raise ModelLoadError("Qwen2 sliding-window attention is not supported by the engine")

        n_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
        max_seq_len = hf.get("max_position_embeddings", 2048)
        rope_theta, rope_scaling = _read_rope(hf, max_seq_len)
        if model_type == "qwen2":
            qkv_bias, o_bias, mlp_bias = True, False, False
        else:
            qkv_bias = o_bias = bool(hf.get("attention_bias", False))
            mlp_bias = bool(hf.get("mlp_bias", False))
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            intermediate_size=hf["intermediate_size"],
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=qkv_bias,
            o_proj_bias=o_bias,
            mlp_bias=mlp_bias,
            max_seq_len=max_seq_len,
        )


def _read_rope(hf: dict[str, Any], max_seq_len: int) -> tuple[float, RopeScaling | None]:
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(rope.get("rope_theta", hf.get("rope_theta", DEFAULT_ROPE_THETA)))
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ModelLoadError("partial rotary embeddings are not supported by the engine")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ModelLoadError(f"rope type {rope_type!r} is not supported (only default and llama3)")
    original = hf.get("original_max_position_embeddings") or rope.get(
        "original_max_position_embeddings", max_seq_len
    )
    scaling = RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(original),
    )
    return theta, scaling


_LLAMA_31_8B = EngineConfig(
    vocab_size=128256,
    hidden_size=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    head_dim=128,
    intermediate_size=14336,
    rms_norm_eps=1e-5,
    rope_theta=500_000.0,
    rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192),
    max_seq_len=131072,
)


class _Presets(dict):
    """Engine shapes by name. The shapes of lmprof's built-in models (tiny, smollm2-135m,
    llama-3.2-1b, qwen2.5-0.5b) are not repeated here: they are read from their one
    definition in lmprof.models.presets, through the same from_hf_config as a checkpoint."""

    def __missing__(self, name: str) -> EngineConfig:
        from lmprof.models.presets import is_builtin_name, preset_config

        if not is_builtin_name(name):
            raise KeyError(name)
        config = EngineConfig.from_hf_config(preset_config(name).to_dict())
        self[name] = config
        return config

    def __contains__(self, name: object) -> bool:
        from lmprof.models.presets import is_builtin_name

        return dict.__contains__(self, name) or (isinstance(name, str) and is_builtin_name(name))


PRESETS: dict[str, EngineConfig] = _Presets(
    {
        "smollm2-360m": EngineConfig(
            vocab_size=49152,
            hidden_size=960,
            n_layers=32,
            n_heads=15,
            n_kv_heads=5,
            head_dim=64,
            intermediate_size=2560,
            rms_norm_eps=1e-5,
            rope_theta=100_000.0,
            tie_embeddings=True,
            max_seq_len=8192,
        ),
        "tinyllama-1.1b": EngineConfig(
            vocab_size=32000,
            hidden_size=2048,
            n_layers=22,
            n_heads=32,
            n_kv_heads=4,
            head_dim=64,
            intermediate_size=5632,
            rms_norm_eps=1e-5,
            max_seq_len=2048,
        ),
        "llama-3.1-8b": _LLAMA_31_8B,
    }
)
