"""A Llama-family decoder (Llama 2/3, SmolLM2, TinyLlama, Qwen2) in plain PyTorch.

Pre-norm blocks of RMSNorm -> grouped-query attention with rotary embeddings -> RMSNorm ->
SwiGLU MLP, then a final norm and the output head (optionally tied to the embedding).
Numerics follow transformers' modeling_llama so logits match it in fp32: norms and rotary
angles are computed in fp32, softmax in fp32.

Shapes: B batch, T new tokens, S attended key slots, D hidden, H query heads, KV key/value
heads, hd head_dim, I intermediate, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmprof.engine.config import EngineConfig
from lmprof.engine.kv_cache import KVCache
from lmprof.engine.options import EngineOptions

if TYPE_CHECKING:
    from lmprof.engine.huge_pages import HugePagePlacement


class NativeCall(Protocol):
    """A whole decode step run as one call in place of the layers: lmprof.engine.native_decode's
    NativeStep. Named here by what forward needs, so the model does not import the native step,
    which reads the model's own parts (rope_cos_sin, its int8 layers)."""

    def run(self, model: Transformer, tokens: Tensor, cache: KVCache | None) -> Tensor: ...


@dataclass
class Segment:
    """Rows of one shape inside a mixed forward pass (Transformer.forward_segments): token ids
    [B, T], their rope positions [B, T], the mask [B, 1, T, S] over the keys their cache
    returns, and the cache that writes their K/V."""

    tokens: Tensor
    positions: Tensor
    mask: Tensor
    cache: KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(config: EngineConfig) -> Tensor:
    """Inverse rotary frequencies [hd/2], with Llama 3 scaling when the config asks for it."""
    hd = config.head_dim
    # device="cpu" on purpose: the model may be built on the meta device, this buffer may not.
    exponents = torch.arange(0, hd, 2, dtype=torch.int64, device="cpu").float() / hd
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    # Llama 3: keep short wavelengths, divide long ones by `factor`, blend the ones in between.
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin(inv_freq: Tensor, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # positions: [B, T] -> cos, sin: [B, 1, T, hd] (the 1 broadcasts over heads)
    freqs = positions[..., None].float() * inv_freq  # [B, T, hd/2]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, hd]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: [B, heads, T, hd]; HF checkpoints pair dimension i with i + hd/2 ("rotate half").
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, naive: bool, grouped: bool) -> Tensor:
    """Causal GQA attention. q: [B, H, T, hd]; k, v: [B, KV, S, hd]; mask: [B, 1, T, S] bool."""
    B, H, T, hd = q.shape
    n_kv = k.shape[1]
    groups = H // n_kv
    if groups > 1 and grouped:
        # Query heads that share a K/V head become extra query rows: no K/V copies.
        q = q.reshape(B, n_kv, groups * T, hd)  # [B, KV, groups*T, hd]
        mask = mask.repeat(1, 1, groups, 1)  # [B, 1, groups*T, S]
    elif groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # [B, H, S, hd]
        v = v.repeat_interleave(groups, dim=1)
    if naive:
        scores = (q @ k.transpose(-2, -1)) * hd**-0.5  # [B, heads, rows, S]
        scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.reshape(B, H, T, hd)


def fuse_linears(linears: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the concatenation of `linears`' outputs (weights concatenated once)."""
    weight = torch.cat([lin.weight for lin in linears])  # [sum(out), in]
    bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


class Attention(nn.Module):
    def __init__(self, config: EngineConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        D = config.hidden_size
        q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.q_proj: nn.Module | None = nn.Linear(D, q_dim, bias=config.attention_bias)
        self.k_proj: nn.Module | None = nn.Linear(D, kv_dim, bias=config.attention_bias)
        self.v_proj: nn.Module | None = nn.Linear(D, kv_dim, bias=config.attention_bias)
        self.qkv_proj: nn.Module | None = None  # set by fuse()
        self.o_proj = nn.Linear(q_dim, D, bias=config.o_proj_bias)
        self.naive = False  # switches, set by Transformer.set_attention
        self.grouped = True

    def fuse(self) -> None:
        self.qkv_proj = fuse_linears([self.q_proj, self.k_proj, self.v_proj])
        self.q_proj = self.k_proj = self.v_proj = None

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache: KVCache | None, slots: Tensor | None
    ) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self._project(x)
        return self.o_proj(self._attend_rows(q, k, v, B, T, cos, sin, mask, cache, slots))

    def forward_segments(
        self, x: Tensor, segments: list[Segment], ropes: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        """x: [N, D], the segments' tokens one after another -> [N, D]. The projections run
        once over all N tokens; rope, the cache write and attention run per segment."""
        q, k, v = self._project(x)
        out, start = [], 0
        for segment, (cos, sin) in zip(segments, ropes, strict=True):
            B, T = segment.tokens.shape
            end = start + B * T
            y = self._attend_rows(
                q[start:end], k[start:end], v[start:end], B, T, cos, sin, segment.mask, segment.cache, None
            )  # fmt: skip
            out.append(y.reshape(B * T, -1))
            start = end
        return self.o_proj(torch.cat(out))

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.qkv_proj is not None:
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return self.qkv_proj(x).split([q_dim, kv_dim, kv_dim], dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _attend_rows(
        self, q: Tensor, k: Tensor, v: Tensor, B: int, T: int, cos: Tensor, sin: Tensor, mask: Tensor,
        cache: KVCache | None, slots: Tensor | None,
    ) -> Tensor:  # fmt: skip
        """Projected q, k, v of B rows of T tokens -> attention output [B, T, H*hd]."""
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, KV, T, hd]
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, slots, k, v)  # [B, KV, S, hd]
        y = attend(q, k, v, mask, self.naive, self.grouped)  # [B, H, T, hd]
        return y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # [B, T, H*hd]


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        D, I = config.hidden_size, config.intermediate_size  # noqa: E741
        self.gate_proj: nn.Module | None = nn.Linear(D, I, bias=config.mlp_bias)
        self.up_proj: nn.Module | None = nn.Linear(D, I, bias=config.mlp_bias)
        self.gate_up_proj: nn.Module | None = None  # set by fuse()
        self.down_proj = nn.Linear(I, D, bias=config.mlp_bias)

    def fuse(self) -> None:
        self.gate_up_proj = fuse_linears([self.gate_proj, self.up_proj])
        self.gate_proj = self.up_proj = None

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # 2 x [B, T, I]
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: EngineConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache: KVCache | None, slots: Tensor | None
    ) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, slots)
        return x + self.mlp(self.mlp_norm(x))

    def forward_segments(
        self, x: Tensor, segments: list[Segment], ropes: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        x = x + self.attention.forward_segments(self.attention_norm(x), segments, ropes)
        return x + self.mlp(self.mlp_norm(x))


def causal_mask(query_slots: Tensor, key_valid: Tensor) -> Tensor:
    """[B, 1, T, S] bool: a query may see valid keys at or before its slot, and always itself.

    query_slots: [T] cache slots of the new tokens; key_valid: [B, S] (False for left padding
    and for static-cache slots not written yet). Seeing itself keeps padding rows from being
    fully masked, which would turn their softmax (and then their cached K/V) into NaN.
    """
    key_slots = torch.arange(key_valid.shape[1], device=key_valid.device)
    before = key_slots[None, :] <= query_slots[:, None]  # [T, S]
    itself = key_slots[None, :] == query_slots[:, None]
    return (before & key_valid[:, None, None, :]) | itself  # [B, 1, T, S]


class Transformer(nn.Module):
    def __init__(self, config: EngineConfig, options: EngineOptions | None = None) -> None:
        super().__init__()
        self.config = config
        self.options = options or EngineOptions()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Change the dtype through the loader (EngineOptions.dtype), not Module.to(dtype), which
        # would round these frequencies too.
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)
        self.set_attention(self.options.attention, self.options.gqa)
        # What the huge_pages switch got from the kernel (set by the loader), None without it.
        self.huge_page_placement: HugePagePlacement | None = None

    def set_attention(self, attention: str, gqa: str) -> None:
        """Switch the attention kernel ("naive" | "sdpa") and GQA handling ("repeat" | "grouped")."""
        for block in self.layers:
            block.attention.naive = attention == "naive"
            block.attention.grouped = gqa == "grouped"

    def fuse_projections(self, qkv: bool = True, gate_up: bool = True) -> None:
        for block in self.layers:
            if qkv:
                block.attention.fuse()
            if gate_up:
                block.mlp.fuse()

    def store_column_major(self) -> None:
        """Keep each float linear weight [out, in] as the transpose of a contiguous [in, out] tensor.

        Same values and the same F.linear call, but the BLAS then sees an untransposed
        row-major matrix, which CPU GEMV kernels stream faster (about 1.4x measured at batch 1).
        A tied head transposes the shared embedding too; a row lookup then gathers strided values.
        """
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        for linear in linears:
            linear.weight = nn.Parameter(linear.weight.detach().t().contiguous().t(), requires_grad=False)
        if self.config.tie_embeddings:
            self.embed_tokens.weight = self.lm_head.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        slots: Tensor | None = None,
        last_only: bool = False,
        native: NativeCall | None = None,
    ) -> Tensor:
        """tokens: [B, T] -> logits [B, T, V] ([B, 1, V] with last_only).

        Without `positions`/`mask`, the tokens are one unpadded sequence starting at position 0.
        With a cache, pass the rope positions [B, T], the cache `slots` [T] and the mask
        [B, 1, T, S] over every slot the cache returns. With `native` (one new token per row,
        a static cache), the whole step runs as one call into lmprof's C++ kernels, which reads
        the rows' positions and marks their slot from the NativeCall (positions, mask unused).
        """
        if native is not None:  # embedding, rope positions and every layer in one native call
            return native.run(self, tokens, cache)  # [B, 1, V]
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        if mask is None and native is None:
            if cache is not None:
                raise ValueError("a forward pass with a KV cache needs an explicit mask")
            slots = torch.arange(T, device=tokens.device)
            mask = causal_mask(slots, torch.ones(B, T, dtype=torch.bool, device=tokens.device))
        x = self.embed_tokens(tokens).to(self.dtype)  # [B, T, D]
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)  # [B, 1, T, hd]
        for block in self.layers:
            x = block(x, cos, sin, mask, cache, slots)
        if last_only:
            x = x[:, -1:]  # [B, 1, D]: prefill only needs the next token's logits
        return self.lm_head(self.norm(x))  # [B, T, V]

    def forward_segments(self, segments: list[Segment]) -> list[Tensor]:
        """Rows of different shapes in one pass -> each segment's last-token logits [B, V].

        A continuous batch's decode rows (one token each) and prefill chunks (T tokens each)
        differ in shape, so they cannot be one [B, T] batch without padding every decode row
        to T. Here their tokens are laid end to end as [N, D]: every projection, the MLP and
        the head read the weights once for all of them, and only rope, the cache write and
        attention run per segment."""
        x = torch.cat([self.embed_tokens(s.tokens).to(self.dtype).flatten(0, 1) for s in segments])  # [N, D]
        ropes = [rope_cos_sin(self.inv_freq, s.positions, x.dtype) for s in segments]
        for block in self.layers:
            x = block.forward_segments(x, segments, ropes)
        lasts, start = [], 0
        for segment in segments:
            B, T = segment.tokens.shape
            lasts.append(x[start : start + B * T].view(B, T, -1)[:, -1])  # [B, D]
            start += B * T
        logits = self.lm_head(self.norm(torch.cat(lasts)))  # [sum of B, V]
        return list(logits.split([s.tokens.shape[0] for s in segments]))
