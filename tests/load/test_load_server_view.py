"""The server's /metrics as lmprof load keeps it: vLLM's and lmprof's names, counters and
gauges summed over labels, histograms dropped, and the figures read from them."""

from __future__ import annotations

import pytest

from lmprof.analyze.load import server_figures
from lmprof.load.server_view import parse_metrics
from lmprof.record.load import MetricsSample

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{model_name="m"} 100.0
vllm:prefix_cache_queries_created{model_name="m"} 1.7e9
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{model_name="m"} 40.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 3.0
vllm:time_to_first_token_seconds_count{model_name="m"} 3.0
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 5.0
"""


def test_parse_keeps_counters_and_gauges_summed_over_labels():
    assert parse_metrics(VLLM_METRICS) == {
        "vllm:num_requests_running": 5.0,
        "vllm:num_requests_waiting": 7.0,
        "vllm:gpu_cache_usage_perc": 0.25,
        "vllm:prefix_cache_queries_total": 100.0,
        "vllm:prefix_cache_hits_total": 40.0,
    }


def test_not_prometheus_text_is_an_error():
    with pytest.raises(ValueError):
        parse_metrics("vllm:num_requests_running{oops 3\n")


def test_server_figures_over_a_level():
    def sample(t, running, queries, hits):
        return MetricsSample(t, {"vllm:num_requests_running": running, "vllm:gpu_cache_usage_perc": running / 10,
                                 "vllm:prefix_cache_queries_total": queries, "vllm:prefix_cache_hits_total": hits})  # fmt: skip

    samples = [
        sample(0.0, 0, 100, 40),
        sample(1.0, 4, 150, 60),
        sample(2.0, 8, 200, 100),
        sample(3.5, 0, 300, 190),
    ]
    figures = server_figures(samples, 0.5, 3.0)
    assert figures["running_mean"] == 6 and figures["running_max"] == 8
    assert figures["kv_cache_usage_max"] == pytest.approx(0.8)
    # From the last scrape before the level to the first after it: (190 - 40) / (300 - 100).
    assert figures["prefix_cache_hit_rate"] == pytest.approx(0.75)


def test_other_servers_gauges_are_read():
    tgi = MetricsSample(0.5, {"tgi_batch_current_size": 3.0, "tgi_queue_size": 1.0})
    llama = MetricsSample(0.5, {"llamacpp:requests_processing": 2.0, "llamacpp:requests_deferred": 4.0})
    assert (
        server_figures([tgi], 0.0, 1.0)["running_max"] == 3
        and server_figures([tgi], 0.0, 1.0)["waiting_max"] == 1
    )
    assert server_figures([llama], 0.0, 1.0)["waiting_max"] == 4
    text = "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n"
    assert parse_metrics(text) == {"llamacpp:requests_processing": 2.0}
