"""Open-loop arrivals (Poisson and gamma) and closed-loop users."""

from __future__ import annotations

import itertools
import json
import statistics

import pytest

from lmprof.load.arrivals import arrival_gaps_s, arrival_times_s
from lmprof.record.load import MODE_CLOSED, load_load_run


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_arrival_gaps_have_the_rate_and_the_shape(burstiness):
    gaps = list(itertools.islice(arrival_gaps_s(8.0, burstiness, seed=3), 40_000))
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / 8.0, rel=0.03)
    # A gamma of shape k has coefficient of variation 1/sqrt(k): 1 for Poisson arrivals.
    cv = statistics.pstdev(gaps) / mean
    assert cv == pytest.approx(burstiness**-0.5, rel=0.05)


def test_arrivals_are_seeded():
    first = list(itertools.islice(arrival_times_s(5.0, seed=1), 50))
    assert first == list(itertools.islice(arrival_times_s(5.0, seed=1), 50))
    assert first != list(itertools.islice(arrival_times_s(5.0, seed=2), 50))
    assert first[0] == 0.0 and all(b > a for a, b in zip(first, first[1:]))


def test_open_loop_sends_at_the_scheduled_arrivals(load, mock_server):
    url, _ = mock_server(ttft_s=0.005, itl_s=0.002)
    run = load(url, rates_rps=[50.0], concurrency=[], requests=40, output_tokens=4, seed=7)
    level = run.levels[0]
    reqs = [r for r in run.requests if r.level == 0]
    offsets = [r.scheduled_s - level.start_s for r in reqs]
    expected = list(itertools.islice(arrival_times_s(50.0, 1.0, seed=7), 40))
    assert offsets == pytest.approx(expected, abs=1e-9)
    lateness = sorted(r.sent_s - r.scheduled_s for r in reqs)
    assert lateness[0] >= 0 and lateness[len(lateness) // 2] < 0.02


def test_closed_loop_users_send_when_their_last_request_ends(load, mock_server):
    url, server = mock_server(ttft_s=0.01, itl_s=0.002)
    run = load(url, concurrency=[3], requests=15, output_tokens=4)
    assert run.levels[0].mode == MODE_CLOSED
    reqs = [r for r in run.requests if r.level == 0]
    assert len(reqs) == 15 and {r.user for r in reqs} == {0, 1, 2}
    for user in range(3):
        mine = [r for r in reqs if r.user == user]
        assert mine[0].scheduled_s == run.levels[0].start_s
        for before, after in zip(mine, mine[1:]):
            assert after.scheduled_s == before.end_s  # free when the last one ended
            assert 0 <= after.sent_s - after.scheduled_s < 0.1  # (a busy machine can hold a task 20 ms)
    assert server.state.max_running == 3


def test_duration_bounds_a_level(load, mock_server):
    url, _ = mock_server(ttft_s=0.01, itl_s=0.002)
    run = load(url, concurrency=[2], requests=None, duration_s=0.5, output_tokens=4)
    level = run.levels[0]
    reqs = [r for r in run.requests if r.level == 0]
    assert len(reqs) > 10
    assert all(r.scheduled_s < level.start_s + 0.5 for r in reqs)  # none started after the end
    assert level.end_s - level.start_s < 0.5 + 0.2


def test_sweep_probes_then_spreads_rates_below_saturation(load, mock_server):
    url, _ = mock_server(ttft_s=0.02, itl_s=0.002)
    run = load(url, concurrency=[], sweep_steps=3, max_concurrency=4, requests=12, output_tokens=4)
    probe, *levels = run.levels
    assert probe.label == "probe" and probe.mode == MODE_CLOSED and probe.concurrency == 4
    probe_reqs = [r for r in run.requests if r.level == probe.index and r.ok]
    probe_rps = len(probe_reqs) / (probe.end_s - probe.start_s)
    rates = [lv.rate_rps for lv in levels]
    assert len(rates) == 3 and rates == sorted(rates)
    assert rates[-1] == pytest.approx(probe_rps, rel=1e-3)
    assert rates[0] == pytest.approx(probe_rps / 3, rel=1e-3)


def test_infinite_rate_sends_everything_at_once_under_the_cap(mock_server, tmp_path, capsys):
    from lmprof.cli.main import main

    url, server = mock_server(ttft_s=0.02, itl_s=0.002)
    out = tmp_path / "run"
    argv = ["load", url, "--rate", "inf", "--max-concurrency", "3", "--requests", "9", "--output-tokens", "4"]
    assert main([*argv, "--out", str(out), "--json"]) == 0
    level = json.loads(capsys.readouterr().out)["levels"][0]
    assert level["title"] == "rate inf (all at once), max 3 in flight" and level["completed"] == 9
    run = load_load_run(out)
    reqs = [r for r in run.requests if r.level == 0]
    assert {r.scheduled_s for r in reqs} == {run.levels[0].start_s}
    assert server.state.max_running == 3
    # The last three waited in the client for two rounds: latency from scheduled shows it.
    waits = sorted(r.sent_s - r.scheduled_s for r in reqs)
    assert waits[-1] > 0.05
