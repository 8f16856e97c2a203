"""Llama checkpoints written as float32 GGUF files, the way llama.cpp's converter writes them,
for the tests that load GGUF (test_engine.py, test_model_resolution.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LAYER_NAMES = {  # transformers' module inside a layer -> llama.cpp's tensor name
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd",
    "model.norm.weight": "output_norm",
    "lm_head.weight": "output",
}


def permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved per rotary pair; transformers undoes this on load.
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama_gguf_writer(path: Path, config: Any) -> Any:
    """A gguf.GGUFWriter for `path` holding the architecture's metadata from a LlamaConfig."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    return writer


def write_llama_tensors(writer: Any, model: Any) -> None:
    """Every tensor of a LlamaForCausalLM under llama.cpp's names (q/k permuted), then the file.
    A tied output head is left out: the embedding serves as both."""
    config = model.config
    for name, tensor in model.state_dict().items():
        array = tensor.numpy()
        if name in TOP_NAMES:
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            writer.add_tensor(f"{TOP_NAMES[name]}.weight", np.ascontiguousarray(array))
            continue
        _, _, layer, *module, _ = name.split(".")  # model.layers.<i>.<module>.weight
        module = ".".join(module)
        if module == "self_attn.q_proj":
            array = permute_for_gguf(array, config.num_attention_heads)
        elif module == "self_attn.k_proj":
            array = permute_for_gguf(array, config.num_key_value_heads)
        writer.add_tensor(f"blk.{layer}.{LAYER_NAMES[module]}.weight", np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
