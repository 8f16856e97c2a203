"""The server's Prometheus metrics, in a registry of their own (never the process-global one,
so two servers in one process, as in the tests, count apart). Names follow vLLM's `vllm:`
style with an `lmprof:` prefix so dashboards built for one read the other."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.running = Gauge("lmprof:num_requests_running", "Requests in the running batch", registry=r)
        self.waiting = Gauge(
            "lmprof:num_requests_waiting", "Requests admitted but not yet running", registry=r
        )
        self.requests = Counter(
            "lmprof:requests", "Requests answered, by outcome", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("lmprof:prompt_tokens", "Prompt tokens of answered requests", registry=r)
        self.generation_tokens = Counter("lmprof:generation_tokens", "Completion tokens sent", registry=r)
        self.cache_queries = Counter(
            "lmprof:response_cache_queries", "Response cache lookups (cacheable requests)", registry=r
        )
        self.cache_hits = Counter("lmprof:response_cache_hits", "Response cache hits", registry=r)
        self.batch_size = Histogram(
            "lmprof:batch_size", "Rows per engine step", buckets=BATCH_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "lmprof:time_to_first_token_seconds",
            "Arrival to first token",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_time = Histogram(
            "lmprof:request_queue_time_seconds", "Arrival to the start of its batch",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "lmprof:e2e_request_latency_seconds", "Arrival to the last byte",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip

        # The prefix cache's counters are tokens, as vLLM counts them, under vLLM's names (so a
        # load run reads the hit rate of either server the same way) and lmprof's own.
        self.prefix_queries = [
            Counter(f"{ns}:prefix_cache_queries", "Prompt tokens looked up in the prefix cache", registry=r)
            for ns in ("vllm", "lmprof")
        ]
        self.prefix_hits = [
            Counter(f"{ns}:prefix_cache_hits", "Prompt tokens found in the prefix cache", registry=r)
            for ns in ("vllm", "lmprof")
        ]
        self._prefix_counted = (0, 0)

    def count_prefix_cache(self, cache) -> None:
        """Bring the counters up to the cache's own totals (the model thread calls it per step)."""
        queries, hits = cache.queries_tokens, cache.hits_tokens
        d_queries, d_hits = queries - self._prefix_counted[0], hits - self._prefix_counted[1]
        self._prefix_counted = (queries, hits)
        for counter in self.prefix_queries:
            counter.inc(d_queries)
        for counter in self.prefix_hits:
            counter.inc(d_hits)

    def watch_kv(self, kv_bytes, kv_usage) -> None:
        """KV-cache gauges read at scrape time: bytes of K/V held, and the share of the budget
        (vLLM's kv_cache_usage_perc is that fraction, 0 to 1)."""
        r = self.registry
        Gauge("lmprof:kv_cache_bytes", "Bytes of K/V held by running requests", registry=r).set_function(
            kv_bytes
        )
        for ns in ("vllm", "lmprof"):
            gauge = Gauge(f"{ns}:kv_cache_usage_perc", "Share of the KV budget in use (0-1)", registry=r)
            gauge.set_function(kv_usage)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
