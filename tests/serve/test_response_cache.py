"""The response cache: a repeated greedy or seeded request is answered from it, identically,
in either shape, without running the model; it is counted; sampled requests skip it; the LRU
stays within its bytes."""

from __future__ import annotations

import aiohttp
from serve_helpers import (
    TIMEOUT,
    RunningServer,
    completion_text,
    metric_values,
    post,
    run,
    stream,
    streamed_text,
)

from lmprof.serve.response_cache import CachedResponse, ResponseCache


def test_a_hit_repeats_the_answer_without_the_model(model_transformers):
    body = {"prompt": "Cache me", "temperature": 0, "max_tokens": 8, "ignore_eos": True}

    async def go(server):
        url = server.url + "/v1/completions"
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            _, first, _ = await post(s, url, body)
            steps = len(server.profiler.steps)
            _, again, _ = await post(s, url, body)
            _, items = await stream(s, url, {**body, "stream_options": {"include_usage": True}})
            steps_after = len(server.profiler.steps)
            _, sampled, _ = await post(s, url, {**body, "temperature": 0.8})
            _, other, _ = await post(s, url, {**body, "max_tokens": 7})
            return first, again, items, steps, steps_after, sampled, other, await metric_values(s, server.url)

    with RunningServer(model_transformers, scheduler="async", response_cache_bytes=1 << 20) as server:
        first, again, items, steps, steps_after, sampled, other, metrics = run(go(server))
    assert first["usage"]["lmprof"] == {"response_cache": "miss"}
    assert again["usage"]["lmprof"] == {"response_cache": "hit"}
    assert completion_text(again) == completion_text(first) and streamed_text(items) == completion_text(first)
    assert items[-2]["usage"]["lmprof"] == {"response_cache": "hit"} and items[-1] == "[DONE]"
    assert again["usage"]["completion_tokens"] == first["usage"]["completion_tokens"] == 8
    assert steps_after == steps, "a cache hit ran the model"
    assert "lmprof" not in sampled["usage"]  # unseeded sampling: never looked up
    assert other["usage"]["lmprof"] == {"response_cache": "miss"}  # any parameter changes the key
    assert metrics["lmprof:response_cache_queries_total"] == 4
    assert metrics["lmprof:response_cache_hits_total"] == 2


def test_lru_stays_within_its_bytes():
    entry = CachedResponse("x" * 100, "length", 3, 10)
    size = entry.size_bytes("k0")
    cache = ResponseCache(capacity_bytes=size * 2)
    cache.put("k0", entry)
    cache.put("k1", entry)
    assert cache.get("k0") is entry  # k0 is now the most recent
    cache.put("k2", entry)
    assert cache.get("k1") is None and cache.get("k0") is entry and cache.get("k2") is entry
    assert cache.used_bytes <= cache.capacity_bytes and len(cache) == 2
    cache.put("huge", CachedResponse("y" * (size * 3), "length", 1, 1))
    assert cache.get("huge") is None and len(cache) == 2
