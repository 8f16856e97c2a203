"""Figures from hand-built load runs: vLLM's definitions, goodput, errors, --slo, --fail-on."""

from __future__ import annotations

import pytest

from lmprof.analyze.load import percentile, summarize
from lmprof.analyze.load_compare import check_load_thresholds, compare_load_runs, parse_load_thresholds
from lmprof.errors import UsageError
from lmprof.load.options import parse_slo, split_url


def test_vllm_definitions(hand_run):
    s = summarize(hand_run()).levels[0]
    assert (s.sent, s.completed) == (4, 3)
    assert s.latency_s["ttft"]["p50"] == pytest.approx(0.200)
    assert s.latency_s["tpot"]["mean"] == pytest.approx((0.020 + 0.050 + 0.010) / 3)
    assert s.latency_s["itl"]["n"] == 17  # every gap of every request, pooled
    assert s.latency_s["e2el"]["max"] == pytest.approx(0.300 + 0.200)
    assert s.request_rps == pytest.approx(3 / 2.0)
    assert s.output_tps == pytest.approx(20 / 2.0)
    assert s.total_tps == pytest.approx(50 / 2.0)
    # From the scheduled time the queued request is 0.2 s later; the others are the same.
    assert s.scheduled_latency_s["ttft"]["max"] == pytest.approx(0.400)
    assert s.client_queue_s["max"] == pytest.approx(0.2)
    assert s.errors["http_503"]["count"] == 1 and s.errors["http_503"]["latency_s"]["p50"] > 0
    assert s.client_cpu_share == pytest.approx(0.1)


def test_percentiles_interpolate_like_numpy():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 99) == pytest.approx(3.97)
    assert percentile([5], 90) == 5


def test_goodput_counts_requests_meeting_every_slo(hand_run):
    run = hand_run(slo=parse_slo("ttft=250ms,tpot=30ms"))
    g = summarize(run).levels[0].goodput
    # 0 meets both; 1 misses TTFT and TPOT; 2 meets both from send; 3 failed.
    assert g["share"] == pytest.approx(2 / 4)
    assert g["rps"] == pytest.approx(2 / 2.0)
    # From its scheduled time request 2 waited 0.4 s for its first token: it misses.
    assert g["share_from_scheduled"] == pytest.approx(1 / 4)


def test_client_bottleneck_warns(hand_run):
    run = hand_run()
    run.levels[0].cpu_s = 1.9  # 95 % of a core over the 2 s level
    run.levels[0].loop_lag_s = [0.001] * 90 + [0.05] * 10
    warnings = " ".join(summarize(run).warnings)
    assert "95% of a CPU core" in warnings and "event loop woke" in warnings
    assert not summarize(hand_run()).warnings


def test_answers_shorter_than_asked_are_flagged(hand_run):
    # A server that cuts streams short (llama-cpp-python's server lets a new request interrupt
    # the running one) must not pass for a fast one: its answers are shorter than asked.
    run = hand_run()
    for r in run.requests:
        r.planned_output_tokens = 10
    warnings = " ".join(summarize(run).warnings)
    assert "2 of 3 answers ended well before the 10 tokens asked (median 5)" in warnings
    for r in run.requests:  # one token short of the asked length: a re-count's difference, no cut
        r.planned_output_tokens = (
            (r.output_tokens or 0) + 1 if r.output_tokens and r.output_tokens > 9 else r.output_tokens
        )
    assert not summarize(run).warnings


def test_short_answers_of_varied_asked_lengths_say_the_range(hand_run):
    run = hand_run()  # answers of 5, 5 and 10 tokens
    for r, asked in zip(run.requests, (12, 20, 10, 10, 10)):  # --range-ratio: each asked its own
        r.planned_output_tokens = asked
    warnings = " ".join(summarize(run).warnings)
    assert "2 of 3 answers ended well before the 12-20 tokens asked (median 5)" in warnings


@pytest.mark.parametrize(
    "text, expected",
    [("ttft=500ms,tpot=50ms,e2el=2s", {"ttft": 0.5, "tpot": 0.05, "e2el": 2.0}), ("ttft=200", {"ttft": 0.2})],
)
def test_parse_slo(text, expected):
    assert parse_slo(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["ttft", "ttft=fast", "latency=2s", "ttft=2h"])
def test_bad_slo_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="--slo"):
        parse_slo(bad)


def test_split_url():
    assert split_url("http://h:8000", None) == ("http://h:8000", "/v1/completions")
    assert split_url("http://h:8000/v1/", "/v1/chat/completions") == ("http://h:8000", "/v1/chat/completions")
    assert split_url("http://h/api/v1/chat/completions", None) == ("http://h/api", "/v1/chat/completions")
    with pytest.raises(UsageError, match="not an http"):
        split_url("h:8000", None)


def test_fail_on_thresholds(hand_run):
    base, slower = hand_run(), hand_run(speed=2.0)
    comparison = compare_load_runs([base, slower], ["a", "b"])
    checks = check_load_thresholds(comparison, parse_load_thresholds(["ttft_p99=+20%", "output_tps=-5%"]))
    verdicts = {c.threshold.figure: c.breached for c in checks}
    assert verdicts == {"ttft_p99": True, "output_tps": False}  # same tokens in the same window
    checks = check_load_thresholds(comparison, parse_load_thresholds(["ttft_p50>+150ms", "tpot_p50<-1ms"]))
    assert [c.breached for c in checks] == [True, False]


@pytest.mark.parametrize("bad", ["ttft_p99=20%", "latency=+5%", "output_tps=+5ms", "ttft_p99"])
def test_bad_fail_on_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="--fail-on"):
        parse_load_thresholds([bad])


def test_loop_lag_ticker_reads_the_injected_clock():
    import asyncio
    import itertools

    from lmprof.clock import Clock
    from lmprof.load.client_health import LoopLagTicker

    # A clock that moves 30 ms at every read: each tick asks to wake 1 ms after one read
    # and is checked at the next, so every tick is 29 ms late on this clock.
    ticks = itertools.count()
    ticker = LoopLagTicker(Clock(wall=lambda: next(ticks) * 0.030), tick_s=0.001)

    async def run() -> list[float]:
        ticker.start()
        await asyncio.sleep(0.05)
        return await ticker.stop()

    lags = asyncio.run(run())
    assert len(lags) >= 3 and all(lag == pytest.approx(0.029) for lag in lags)
