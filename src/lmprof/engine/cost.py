"""Analytic cost of the engine model from its config: parameters, bytes and FLOPs per token.

These are the ceilings a measurement is compared with: a batch-1 decode step must at least
read every weight once (plus the KV cache), so `decode_floor_s` is the fastest step memory
bandwidth allows. FLOPs count a multiply-add as 2; norms, rope and softmax are ignored.
"""

from __future__ import annotations

from lmprof.engine.config import EngineConfig

BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
INT8_SCALE_BYTES = 2  # one bf16 scale per output channel (quant.SCALE_DTYPE)
INT8_REST_BYTES = 4  # with int8 linears, norms (and an untied input embedding) stay fp32


def linear_shapes(config: EngineConfig) -> list[tuple[int, int]]:
    """(out, in) of every matmul weight in one decoder layer."""
    D, I, hd = config.hidden_size, config.intermediate_size, config.head_dim  # noqa: E741
    q_dim, kv_dim = config.n_heads * hd, config.n_kv_heads * hd
    return [(q_dim, D), (kv_dim, D), (kv_dim, D), (D, q_dim), (I, D), (I, D), (D, I)]


def _layer_bias_count(config: EngineConfig) -> int:
    q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    count = (q_dim + 2 * kv_dim) if config.attention_bias else 0
    count += config.hidden_size if config.o_proj_bias else 0
    count += (2 * config.intermediate_size + config.hidden_size) if config.mlp_bias else 0
    return count


def layer_matmul_params(config: EngineConfig) -> int:
    return sum(out * inp for out, inp in linear_shapes(config))


def embedding_params(config: EngineConfig) -> int:
    return config.vocab_size * config.hidden_size


def param_count(config: EngineConfig) -> int:
    """Unique parameters: a tied output head is the embedding, counted once."""
    per_layer = layer_matmul_params(config) + _layer_bias_count(config) + 2 * config.hidden_size  # 2 norms
    head = 0 if config.tie_embeddings else embedding_params(config)
    return embedding_params(config) + config.n_layers * per_layer + config.hidden_size + head


def weight_bytes(config: EngineConfig, dtype: str = "float32") -> int:
    """Bytes of all weights as the engine holds them. "int8": int8 linears (output head included)
    with bf16 per-channel scales; the rest fp32; a tied embedding reads from the int8 head."""
    if dtype != "int8":
        return param_count(config) * BYTES_PER_ELEMENT[dtype]
    V, D, L = config.vocab_size, config.hidden_size, config.n_layers
    int8_bytes = L * layer_matmul_params(config) + V * D
    scale_bytes = INT8_SCALE_BYTES * (L * sum(out for out, _ in linear_shapes(config)) + V)
    rest = L * (_layer_bias_count(config) + 2 * D) + D + (0 if config.tie_embeddings else V * D)
    return int8_bytes + scale_bytes + INT8_REST_BYTES * rest


def kv_bytes_per_token(config: EngineConfig, dtype: str = "float32") -> int:
    """K and V of every layer for one token."""
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * BYTES_PER_ELEMENT[dtype]


def forward_matmul_flops_per_token(config: EngineConfig, with_head: bool = True) -> int:
    """Weight matmuls for one token (the embedding lookup is a gather, not a matmul)."""
    head = config.vocab_size * config.hidden_size if with_head else 0
    return 2 * (config.n_layers * layer_matmul_params(config) + head)


def attention_flops(config: EngineConfig, context_len: int) -> int:
    """QK^T and attention-weights x V for one query token attending over `context_len` keys."""
    return 2 * 2 * config.n_layers * config.n_heads * config.head_dim * context_len


def prefill_flops(config: EngineConfig, prompt_len: int, last_logits_only: bool = True) -> int:
    """A causal prompt forward: token t attends to t + 1 keys; the head runs on the last token
    only (the engine's prefill) unless `last_logits_only` is False."""
    body = prompt_len * forward_matmul_flops_per_token(config, with_head=False)
    attention = attention_flops(config, prompt_len * (prompt_len + 1) // 2)
    head_tokens = 1 if last_logits_only else prompt_len
    return body + attention + head_tokens * 2 * config.vocab_size * config.hidden_size


def decode_flops(config: EngineConfig, context_len: int) -> int:
    """One decode token attending over `context_len` keys (itself included)."""
    return forward_matmul_flops_per_token(config) + attention_flops(config, context_len)


def decode_weight_bytes(config: EngineConfig, dtype: str = "float32") -> int:
    """Weight bytes one decode step reads: everything except an untied input embedding table,
    of which a step reads one row per sequence (ignored)."""
    total = weight_bytes(config, dtype)
    if config.tie_embeddings:
        return total
    table_element_bytes = INT8_REST_BYTES if dtype == "int8" else BYTES_PER_ELEMENT[dtype]
    return total - embedding_params(config) * table_element_bytes


def decode_bytes_per_step(
    config: EngineConfig,
    context_len: int,
    batch: int = 1,
    dtype: str = "float32",
    kv_dtype: str | None = None,
) -> int:
    """Weights read once per step for the whole batch, plus each row's KV cache over `context_len`."""
    kv_dtype = kv_dtype or ("float32" if dtype == "int8" else dtype)
    return decode_weight_bytes(config, dtype) + batch * context_len * kv_bytes_per_token(config, kv_dtype)


def decode_floor_s(weight_bytes: int, bandwidth_bytes_per_s: float) -> float:
    """The fastest a memory-bound decode step can be: every weight byte read once."""
    return weight_bytes / bandwidth_bytes_per_s
