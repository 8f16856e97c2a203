"""The decode step as one native call: the engine's own weight tensors handed to decode_step.cpp.

The switch `EngineOptions(native_decode=True)` replaces the ~50 torch ops per layer of a
decode step (batch 1 or more, one new token per row) with one call into lmprof's C++ kernels
(lmprof/engine/native), reading the same tensors the Python model holds: no copy of the
weights (float32, or int8 with `int8=True`), the same static KV cache. Prefill stays on
torch, whose GEMMs suit many rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmprof.engine.kv_cache import StaticKVCache
from lmprof.engine.quant import Int8Linear
from lmprof.errors import UsageError

_EMPTY = torch.empty(0)


def check_native_decode(model: torch.nn.Module) -> None:
    """Raise UsageError unless the native step can run this model (CPU, fp32 activations,
    checkpoint-layout fp32 or int8 matrices)."""
    device = model.inv_freq.device
    if device.type != "cpu":
        raise UsageError(f"native_decode runs on CPU; this model is on {device} (use compile_decode there)")
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
class NativeStep:
    """What one native decode call needs beyond the embeddings and rotary angles."""

    weights: list[Tensor]  # layer_weights(model), gathered once per generation
    head_scales: Tensor  # lm_head's fp32 scales when it is int8, else empty
    key_valid: Tensor  # [B, capacity] bool
    slot: int  # the cache slot every row writes this step

    def run(
        self, model: torch.nn.Module, x: Tensor, cos: Tensor, sin: Tensor, cache: StaticKVCache
    ) -> Tensor:
        """x: [B, 1, D] embeddings, cos/sin: [B, 1, 1, hd] -> logits [B, 1, V]."""
        from lmprof.engine.native import load_native_ops

        B = x.shape[0]
        config = model.config
        logits = load_native_ops().decode_step(
            x.reshape(B, -1),
            cos.reshape(B, -1).contiguous(),
            sin.reshape(B, -1).contiguous(),
            self.key_valid,
            self.slot,
            self.weights,
            cache.keys,
            cache.values,
            model.norm.weight,
            model.lm_head.weight,
            self.head_scales,
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
