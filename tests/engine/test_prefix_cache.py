"""The prefix cache (engine/prefix_cache.py) alone on hand-made K/V, and inside the continuous
batcher on a tiny checkpoint: a hit gives the same greedy tokens as a miss, skips that much
prefill, stays within its byte budget, and a hash collision is a miss, never wrong blocks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from helpers.engine_models import VOCAB

from lmprof.engine import generate, load_hf_folder
from lmprof.engine import prefix_cache as prefix_cache_module
from lmprof.engine.continuous import ContinuousBatcher, Request
from lmprof.engine.generate import torch_threads
from lmprof.engine.prefix_cache import PrefixCache

BLOCK = 4
LAYERS, KV, HD = 2, 1, 2
BLOCK_BYTES = 2 * LAYERS * KV * BLOCK * HD * 4  # K and V, fp32


def kv_for(tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake K/V [L, KV, T, hd] whose every value names its token, so a test can read back which
    tokens a block was cut from."""
    t = torch.tensor(tokens, dtype=torch.float32)[None, None, :, None].expand(LAYERS, KV, -1, HD)
    return t.clone(), -t.clone()


def tokens_of(blocks) -> list[int]:
    return [int(x) for b in blocks for x in b.keys[0, 0, :, 0]]


def test_match_returns_the_blocks_a_prompt_starts_with_and_counts_tokens():
    cache = PrefixCache(budget_bytes=100 * BLOCK_BYTES, block_tokens=BLOCK)
    stored = list(range(1, 11))  # 10 tokens: two full blocks kept, 2 tokens dropped
    assert cache.insert(stored, *kv_for(stored)) == 2 and len(cache) == 2
    found = cache.match([1, 2, 3, 4, 5, 6, 7, 8, 9], limit=8)
    assert found.tokens == 8 and tokens_of(found.blocks) == list(range(1, 9))
    assert cache.match([1, 2, 3, 4, 5, 6, 7, 8], limit=7).tokens == 4  # one token left to compute
    assert cache.match([1, 2, 3, 4, 0, 6, 7, 8, 9]).tokens == 4  # diverges in block 2
    assert cache.match([0, 1, 2, 3, 4, 5, 6, 7]).tokens == 0  # same tokens, other place
    assert (cache.queries_tokens, cache.hits_tokens) == (9 + 8 + 9 + 8, 8 + 4 + 4)


def test_eviction_keeps_within_budget_least_recently_used_first():
    cache = PrefixCache(budget_bytes=3 * BLOCK_BYTES, block_tokens=BLOCK)
    a, b = [1] * 8, [2] * 8
    cache.insert(a, *kv_for(a))
    cache.insert(b, *kv_for(b))  # 4 blocks > 3: a's leaf is the oldest (a parent outlives its child)
    assert cache.used_bytes <= cache.budget_bytes
    assert cache.match(a).tokens == 4 and cache.match(b).tokens == 8
    c = [3] * 4
    cache.insert(c, *kv_for(c))
    cache.match(c)  # c touched last: b's blocks are the oldest
    d = [4] * 4
    cache.insert(d, *kv_for(d))
    assert cache.match(c).tokens == 4 and cache.match(d).tokens == 4
    assert cache.used_bytes <= cache.budget_bytes and cache.evicted_blocks >= 3
    rng = random.Random(0)
    for _ in range(50):
        run = [rng.randrange(5) for _ in range(rng.randint(0, 20))]
        cache.insert(run, *kv_for(run))
        assert cache.used_bytes == len(cache) * BLOCK_BYTES <= cache.budget_bytes


def test_a_hash_collision_is_a_miss_not_wrong_blocks(monkeypatch):
    monkeypatch.setattr(prefix_cache_module, "block_hash", lambda parent, tokens: 0)  # all collide
    cache = PrefixCache(budget_bytes=100 * BLOCK_BYTES, block_tokens=BLOCK)
    x, y = [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9]
    cache.insert(x, *kv_for(x))
    found = cache.match(y)
    assert tokens_of(found.blocks) == [1, 2, 3, 4]  # the shared block only
    cache.insert(y, *kv_for(y))
    assert tokens_of(cache.match(y).blocks) == y and tokens_of(cache.match(x).blocks) == x
    z = [5, 6, 7, 8]  # x's second block's tokens at the start: same hash, other parent
    assert cache.match(z).tokens == 0


# ---- inside the batcher ----

MAX_SEQ = 96


@pytest.fixture(scope="module")
def model(model_dirs):
    with torch_threads(1):
        yield load_hf_folder(model_dirs["llama3-untied"])


def alone(model, prompt: list[int], max_new: int) -> list[int]:
    with torch_threads(1):
        return generate(model, [prompt], max_new).tokens[0].tolist()


@contextmanager
def forward_tokens(model) -> Iterator[list[int]]:
    """The token count of every forward pass the model runs inside the block."""
    seen: list[int] = []
    forward = model.forward

    def counting(tokens, *args, **kwargs):
        seen.append(tokens.numel())
        return forward(tokens, *args, **kwargs)

    model.forward = counting
    try:
        yield seen
    finally:
        del model.forward


def serve(batcher: ContinuousBatcher, prompt: list[int], max_new: int):
    with torch_threads(1):
        state = batcher.submit(Request(prompt, max_new))
        batcher.run_until_idle()
    return state


@pytest.mark.parametrize("constant_hash", [False, True])
def test_a_prefix_hit_gives_the_same_tokens_and_skips_that_prefill(model, monkeypatch, constant_hash):
    if constant_hash:  # every block collides: only the token check tells them apart
        monkeypatch.setattr(prefix_cache_module, "block_hash", lambda parent, tokens: 0)
    rng = random.Random(3)
    system = [rng.randrange(1, VOCAB) for _ in range(33)]
    first, second = system + [5, 6, 7], system + [8, 9]
    cache = PrefixCache(budget_bytes=1 << 24, block_tokens=8)
    batcher = ContinuousBatcher(model, max_batch=2, max_seq_len=MAX_SEQ, prefill_chunk=16, prefix_cache=cache)
    a = serve(batcher, first, 6)
    assert a.cached_tokens == 0 and a.tokens == alone(model, first, 6)
    want = alone(model, second, 6)
    with forward_tokens(model) as seen:
        b = serve(batcher, second, 6)
    assert sum(seen) == len(second) - 32 + 5  # the uncached prompt tokens, then one a decode step
    assert b.cached_tokens == 32 and b.tokens == want
    assert sum(r.prefill_tokens for r in list(batcher.steps)[-6:]) == len(second) - 32
    # a second turn: the first exchange (prompt and reply) is cached too
    turn = a.context + [11, 12]
    c = serve(batcher, turn, 4)
    assert c.cached_tokens == (len(a.context) - 1) // 8 * 8 and c.tokens == alone(model, turn, 4)
    assert cache.hits_tokens == 32 + c.cached_tokens
    assert cache.queries_tokens == len(first) + len(second) + len(turn)


def test_a_request_admitted_while_another_decodes_finds_its_prompt_blocks(model):
    # Requests that share a system prompt and overlap in time: the second is admitted while the
    # first still decodes, and must not wait for the first to leave to find the shared blocks.
    rng = random.Random(7)
    system = [rng.randrange(1, VOCAB) for _ in range(24)]
    first, second = system + [5, 6], system + [8, 9, 10]
    cache = PrefixCache(budget_bytes=1 << 24, block_tokens=8)
    batcher = ContinuousBatcher(model, max_batch=2, max_seq_len=MAX_SEQ, prefill_chunk=64, prefix_cache=cache)
    with torch_threads(1):
        a = batcher.submit(Request(first, 12))
        batcher.step()  # a's prefill ends here: it decodes from the next step
        assert len(a.tokens) == 1
        b = batcher.submit(Request(second, 6))
        batcher.step()
        assert a.finish_reason is None  # a still running when b was admitted
        batcher.run_until_idle()
    assert b.cached_tokens == 24
    assert a.tokens == alone(model, first, 12) and b.tokens == alone(model, second, 6)


def test_a_preempted_request_recomputes_from_its_own_cached_blocks(model):
    cache = PrefixCache(budget_bytes=1 << 24, block_tokens=4)
    batcher = ContinuousBatcher(
        model, max_batch=3, max_seq_len=MAX_SEQ, prefill_chunk=64, kv_budget_tokens=70, prefix_cache=cache
    )
    rng = random.Random(5)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(20)] for _ in range(3)]
    with torch_threads(1):
        states = [batcher.submit(Request(p, 16)) for p in prompts]
        batcher.run_until_idle()
    assert batcher.preemptions > 0
    assert cache.hits_tokens > 0  # the recompute started from the blocks it left behind
    for state, prompt in zip(states, prompts, strict=True):
        assert state.cached_tokens == 0 and state.tokens == alone(model, prompt, 16)
