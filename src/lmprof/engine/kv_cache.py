"""Key/value caches: what each attention layer keeps so a decode step attends to earlier tokens.

Both caches take the new keys/values of one forward pass and return every key/value the
layer should attend over. `slots` names the cache positions the new tokens occupy (the same
for every row of the batch: rows are left-padded, not packed).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class GrowingKVCache:
    """K/V grow by torch.cat each step: no capacity to choose, but every step copies the whole cache."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    def update(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: [B, n_kv, T, hd] -> [B, n_kv, S + T, hd]
        past_k, past_v = self.keys[layer], self.values[layer]
        if past_k is not None and past_v is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class StaticKVCache:
    """K/V preallocated for `capacity` slots; each step writes in place and attends over all slots.

    Slots not yet written are masked out by the caller. Shapes never change, which is what
    torch.compile and CUDA graphs need; the price is attending over empty slots, so size
    `capacity` to prompt + new tokens rather than the model's maximum.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch, n_kv_heads, capacity, head_dim)
        self.capacity = capacity
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]

    def update(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: [B, n_kv, T, hd] written at `slots`; returns [B, n_kv, capacity, hd]
        self.keys[layer].index_copy_(2, slots, k)
        self.values[layer].index_copy_(2, slots, v)
        return self.keys[layer], self.values[layer]

    def tensors(self) -> list[Tensor]:
        return self.keys + self.values


class KVCache(Protocol):
    """What the model asks of a cache: one call per layer and forward pass. The growing and
    static caches here, and the continuous batcher's row views (slot_pool.py), all answer it."""

    def update(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...
