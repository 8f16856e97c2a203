"""Int8 weight-only quantization: int8 weights, one scale per output channel, float activations.

Decode at batch 1 is bound by reading weights, so a quarter of the bytes can mean up to ~4x
faster steps. On CPU, `torch._weight_int8pack_mm` multiplies bf16 activations by int8
weights without materializing a float copy (with fp32 activations it is far slower, so
activations are cast to bf16 around it). Elsewhere the weights are dequantized inside the
matmul expression, which torch.compile can fuse (gpt-fast's WeightOnlyInt8Linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmprof.engine.model import Transformer

_HAS_INT8PACK = hasattr(torch, "_weight_int8pack_mm")
SCALE_DTYPE = torch.bfloat16  # the CPU kernel wants scales in the activation dtype


def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight [out, in] float -> (int8 [out, in], scales [out]) with weight ~= int8 * scales[:, None]."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # [out]
    # [-127, 127]: symmetric, and the AVX2 W8A8 kernel's sign trick cannot negate -128
    w_int8 = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return w_int8, scales.to(SCALE_DTYPE)


class Int8Linear(nn.Module):
    def __init__(self, weight_int8: Tensor, scales: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight", weight_int8)  # [out, in] int8
        self.register_buffer("scales", scales)  # [out]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        weight_int8, scales = quantize_per_channel(linear.weight.detach())
        return cls(weight_int8, scales, None if linear.bias is None else linear.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and _HAS_INT8PACK:
            x2d = x.reshape(-1, self.in_features).to(SCALE_DTYPE)  # [B*T, in]
            y = torch._weight_int8pack_mm(x2d, self.weight, self.scales)  # [B*T, out]
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        return y if self.bias is None else y + self.bias


class Int8Embedding(nn.Module):
    """Embedding lookup from the int8 table of a tied output head: one int8 copy serves both."""

    def __init__(self, head: Int8Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.head = [head]  # a list, so the head is not registered (and counted) twice
        self.dtype = dtype

    def forward(self, tokens: Tensor) -> Tensor:
        head = self.head[0]
        # tokens: [B, T] -> [B, T, D]
        return head.weight[tokens].to(self.dtype) * head.scales[tokens, None].to(self.dtype)


def quantize_int8(model: Transformer) -> Transformer:
    """Replace every linear layer (attention, MLP, output head) by an Int8Linear, in place."""
    for block in model.layers:
        for parent in (block.attention, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear.from_linear(child))
    float_dtype = model.dtype
    model.lm_head = Int8Linear.from_linear(model.lm_head)
    if model.config.tie_embeddings:
        model.embed_tokens = Int8Embedding(model.lm_head, float_dtype)
    return model
