"""The decode step as one native call: the engine's own weight tensors handed to decode_step.cpp.

The switch `EngineOptions(native_decode=True)` replaces the ~50 torch ops per layer of a
decode step (batch 1 or more, one new token per row) with one call into lmprof's C++ kernels
(lmprof/engine/native), reading the same tensors the Python model holds: no copy of the
weights (float32, or int8 with `int8=True`), the same static KV cache. The call takes the
token ids, not embeddings: it looks them up, reads the rope angles from tables made once per
generation (NativeInputs) and claims its cache slot, so no torch op runs between two native
steps but the pick. Prefill stays on torch, whose GEMMs suit many rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmprof.engine.kv_cache import StaticKVCache
from lmprof.engine.model import rope_cos_sin
from lmprof.engine.quant import Int8Embedding, Int8Linear
from lmprof.errors import UsageError

_EMPTY = torch.empty(0)


def check_native_on(device: str | torch.device, switch: str = "native_decode") -> None:
    """Raise UsageError unless `switch` can run a model on `device`: the CPU only."""
    if torch.device(device).type != "cpu":
        raise UsageError(
            f"{switch} runs the decode step in CPU kernels, not on {device}: add --device cpu "
            "(or use compile_decode there)"
        )


def check_native_decode(model: torch.nn.Module) -> None:
    """Raise UsageError unless the native step can run this model (CPU, fp32 activations,
    checkpoint-layout fp32 or int8 matrices)."""
    check_native_on(model.inv_freq.device)
    if model.dtype != torch.float32:
        raise UsageError(
            f"native_decode runs float32 activations; the model holds {model.dtype} (use dtype float32)"
        )
    for name, param in model.named_parameters():
        if param.dim() == 2 and not param.is_contiguous():
            raise UsageError(
                f"native_decode reads checkpoint-layout weights; {name} is not (drop column_major)"
            )
    if _w8a8(model):
        from lmprof.engine.native import cpu_has_w8a8

        if not cpu_has_w8a8():
            raise UsageError(
                "int8_activations needs an x86 CPU with AVX2 or AVX512-VNNI; drop it "
                "(int8 weight-only still runs)"
            )


def _w8a8(model: torch.nn.Module) -> bool:
    return model.options.int8_activations


def _or_empty(tensor: Tensor | None) -> Tensor:
    return _EMPTY if tensor is None else tensor


def native_scales(linear: torch.nn.Module, w8a8: bool = False) -> Tensor:
    """The fp32 scales the native kernel reads for an int8 layer (it keeps bf16 ones for torch's
    int8 kernel; a few KB), empty for a float one. For W8A8 the weight rows' sums follow
    ([2, out], the shape that tells the kernel W8A8: VNNI's +128 activation offset comes back
    out through them; the AVX2 form keeps activations signed and does not read them); they
    read every weight, so they are made once and cached on the layer."""
    if not isinstance(linear, Int8Linear):
        return _EMPTY
    if not w8a8:
        return linear.scales.float()
    cached = linear.__dict__.get("_native_scales_w8a8")
    if cached is None:  # |sum| <= 127 x in_features: exact in float32 below 2^24
        cached = torch.cat([linear.scales.float(), linear.weight.sum(dim=1, dtype=torch.int32).float()])
        linear.__dict__["_native_scales_w8a8"] = cached
    return cached


def _linear_parts(*linears, w8a8: bool = False) -> list[Tensor]:
    """(weight, bias, scales) per projection, float32 or int8 weights as the model holds them."""
    out: list[Tensor] = []
    for linear in linears:
        if linear is None:
            out += [_EMPTY, _EMPTY, _EMPTY]
        else:
            out += [linear.weight, _or_empty(linear.bias), native_scales(linear, w8a8)]
    return out


def layer_weights(model: torch.nn.Module) -> list[Tensor]:
    """Every layer's tensors in decode_step.cpp's LayerSlot order (23 a layer, empty where absent)."""
    w8a8 = _w8a8(model)
    weights: list[Tensor] = []
    for block in model.layers:
        attn, mlp = block.attention, block.mlp
        qkv = (
            [attn.qkv_proj, None, None]
            if attn.qkv_proj is not None
            else [attn.q_proj, attn.k_proj, attn.v_proj]
        )
        gate_up = [mlp.gate_up_proj, None] if mlp.gate_up_proj is not None else [mlp.gate_proj, mlp.up_proj]
        weights += [block.attention_norm.weight, *_linear_parts(*qkv, attn.o_proj, w8a8=w8a8)]
        weights += [block.mlp_norm.weight, *_linear_parts(*gate_up, mlp.down_proj, w8a8=w8a8)]
    return weights


@dataclass
class NativeInputs:
    """What every native step of one generation reads, gathered at its first step."""

    weights: list[Tensor]  # layer_weights(model)
    head_scales: Tensor  # lm_head's fp32 scales when it is int8, else empty
    embedding: Tensor  # [V, D] float32, or the tied head's int8 table
    embedding_scales: Tensor  # that int8 table's fp32 scales first ([V], or W8A8's [2V]), else empty
    rope_cos: Tensor  # [capacity, hd]: rope_cos_sin at every position the cache can hold
    rope_sin: Tensor


def native_inputs(model: torch.nn.Module, capacity: int) -> NativeInputs:
    """The tensors a native step reads; the rope tables come from the torch path's own
    rope_cos_sin, so both paths rotate by the same angles."""
    lm_head_scales = head_scales(model)
    embed = model.embed_tokens
    if isinstance(embed, Int8Embedding):  # the tied head's table: its scales come first in head_scales
        embedding, embedding_scales = embed.head[0].weight, lm_head_scales
    else:
        embedding, embedding_scales = embed.weight, _EMPTY
    positions = torch.arange(capacity, device=model.inv_freq.device)[None]  # [1, capacity]
    cos, sin = rope_cos_sin(model.inv_freq, positions, torch.float32)  # [1, 1, capacity, hd]
    return NativeInputs(
        layer_weights(model), lm_head_scales, embedding, embedding_scales, cos[0, 0], sin[0, 0]
    )


@dataclass
class NativeStep:
    """One native decode call: the generation's inputs and the rows' state the call advances."""

    inputs: NativeInputs
    key_valid: Tensor  # [B, capacity] bool; the call marks `slot` valid
    positions: Tensor  # [B] int64 rope position of each row's token; the call adds one
    slot: int  # the cache slot every row writes this step

    def run(self, model: torch.nn.Module, tokens: Tensor, cache: StaticKVCache) -> Tensor:
        """tokens: [B, 1] -> logits [B, 1, V]: embedding, rope, every layer, norm and head."""
        from lmprof.engine.native import load_native_ops

        config, inputs = model.config, self.inputs
        logits = load_native_ops().decode_step(
            tokens.reshape(-1),
            inputs.embedding,
            inputs.embedding_scales,
            self.positions,
            inputs.rope_cos,
            inputs.rope_sin,
            self.key_valid,
            self.slot,
            inputs.weights,
            cache.keys,
            cache.values,
            model.norm.weight,
            model.lm_head.weight,
            inputs.head_scales,
            config.n_heads,
            config.n_kv_heads,
            config.rms_norm_eps,
        )
        return logits[:, None]  # [B, 1, V]


def prepare_w8a8(model: torch.nn.Module) -> None:
    """Compute and cache every int8 layer's scales with row sums (see native_scales)."""
    for module in model.modules():
        if isinstance(module, Int8Linear):
            native_scales(module, w8a8=True)


def head_scales(model: torch.nn.Module) -> Tensor:
    return native_scales(model.lm_head, _w8a8(model))
