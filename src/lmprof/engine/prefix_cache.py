"""Prefix caching: K/V of block-aligned token runs kept after a request ends, reused by a later
request that starts with the same tokens, LRU-evicted within a byte budget.

A block is `block_tokens` tokens; its key is a hash of its tokens chained with its parent's
key, so a block only matches at the same place after the same prefix (its K/V depend on
every token before it). A hash is a shortcut, never the proof: a match is confirmed against
the block's stored tokens and its parent entry, so a collision is a miss, not wrong K/V.

Counters follow vLLM's `prefix_cache_queries` / `prefix_cache_hits`: tokens queried (prompt
tokens of every lookup) and tokens found in the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lmprof.engine.slot_pool import KVSlotPool


def block_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    """The key of a block after `parent` (None for the first block)."""
    return hash((parent, tokens))


@dataclass(eq=False)
class CachedBlock:
    key: int
    tokens: tuple[int, ...]
    parent: CachedBlock | None
    keys: Tensor  # [L, KV, block_tokens, hd]
    values: Tensor
    children: set[CachedBlock] = field(default_factory=set)

    def __hash__(self) -> int:
        return id(self)

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2


@dataclass
class PrefixMatch:
    """The cached blocks a prompt starts with, in order."""

    blocks: list[CachedBlock]
    block_tokens: int

    @property
    def tokens(self) -> int:
        return len(self.blocks) * self.block_tokens


class PrefixCache:
    def __init__(self, budget_bytes: int, block_tokens: int = 16) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be positive, got {block_tokens}")
        self.budget_bytes, self.block_tokens = budget_bytes, block_tokens
        self._buckets: dict[int, list[CachedBlock]] = {}
        self._lru: OrderedDict[CachedBlock, None] = OrderedDict()  # oldest first
        self.used_bytes = 0
        self.queries_tokens = 0  # vLLM prefix_cache_queries
        self.hits_tokens = 0  # vLLM prefix_cache_hits
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._lru)

    def _find(self, parent: CachedBlock | None, tokens: tuple[int, ...]) -> CachedBlock | None:
        key = block_hash(None if parent is None else parent.key, tokens)
        for block in self._buckets.get(key, ()):
            if block.tokens == tokens and block.parent is parent:  # confirmed, not just hashed
                return block
        return None

    def match(self, prompt: list[int], limit: int | None = None) -> PrefixMatch:
        """The longest run of cached blocks `prompt` starts with (at most `limit` tokens), touched
        as recently used and counted as a query. Callers pass limit = len(prompt) - 1 so one
        token is left to compute the next token's logits."""
        limit = len(prompt) if limit is None else limit
        blocks: list[CachedBlock] = []
        parent = None
        B = self.block_tokens
        for start in range(0, limit - B + 1, B):
            block = self._find(parent, tuple(prompt[start : start + B]))
            if block is None:
                break
            blocks.append(block)
            parent = block
        for block in reversed(blocks):  # leaf first, so a parent is always newer than its children
            self._lru.move_to_end(block)
        self.queries_tokens += len(prompt)
        self.hits_tokens += len(blocks) * B
        return PrefixMatch(blocks, B)

    def insert(self, tokens: list[int], keys: Tensor, values: Tensor) -> int:
        """Keep the full blocks of `tokens` whose K/V are keys/values [L, KV, >= len, hd] (column =
        position); returns how many blocks are new. Blocks already cached are touched."""
        B = self.block_tokens
        parent, chain, new = None, [], 0
        for start in range(0, len(tokens) - B + 1, B):
            run = tuple(tokens[start : start + B])
            block = self._find(parent, run)
            if block is None:
                block = CachedBlock(
                    key=block_hash(None if parent is None else parent.key, run),
                    tokens=run,
                    parent=parent,
                    keys=keys[:, :, start : start + B].clone(),
                    values=values[:, :, start : start + B].clone(),
                )
                if block.nbytes > self.budget_bytes:
                    break
                self._buckets.setdefault(block.key, []).append(block)
                if parent is not None:
                    parent.children.add(block)
                self._lru[block] = None
                self.used_bytes += block.nbytes
                new += 1
            chain.append(block)
            parent = block
        for block in reversed(chain):
            self._lru.move_to_end(block)
        self._evict_to_budget(keep=set(chain))
        return new

    def restore(self, pool: KVSlotPool, row: int, context: list[int]) -> int:
        """Write the cached blocks `context` begins with into columns [0, n) of the pool's
        `row`, leaving at least its last token to run -> n (0 on a miss)."""
        found = self.match(context, limit=len(context) - 1)
        if found.blocks:
            keys = torch.cat([b.keys for b in found.blocks], dim=2)  # [L, KV, tokens, hd]
            values = torch.cat([b.values for b in found.blocks], dim=2)
            pool.write_prefix(row, 0, keys, values)
        return found.tokens

    def keep(self, pool: KVSlotPool, row: int, context: list[int], tokens: int) -> None:
        """Insert the full blocks of the first `tokens` tokens of `context`, whose K/V sit in the
        pool's `row` at columns equal to their positions."""
        full = tokens // self.block_tokens * self.block_tokens
        if full:
            self.insert(context[:full], *pool.read_columns(row, 0, full))

    def _evict_to_budget(self, keep: set[CachedBlock]) -> None:
        while self.used_bytes > self.budget_bytes and self._lru:
            # The oldest block outside the chain just inserted; else that chain's leaf (its
            # blocks were touched leaf first, so the leaf is the oldest of them).
            victim = next((b for b in self._lru if b not in keep), next(iter(self._lru)))
            self._remove(victim)

    def _remove(self, block: CachedBlock) -> None:
        # A child is unreachable without its parent: it goes too.
        for child in list(block.children):
            self._remove(child)
        del self._lru[block]
        bucket = self._buckets[block.key]
        bucket.remove(block)
        if not bucket:
            del self._buckets[block.key]
        if block.parent is not None:
            block.parent.children.discard(block)
        self.used_bytes -= block.nbytes
        self.evicted_blocks += 1
