"""Fixtures of the `lmprof load` tests: a mock server in a thread and a short load run
against it. Every run is bounded: a request count, a per-request timeout, loopback only."""

from __future__ import annotations

import pytest
from helpers.mock_openai_server import MockConfig, MockServer

from lmprof.load.bench import new_load_run, run_load
from lmprof.load.options import LoadOptions, check_options, split_url
from lmprof.record.load import LevelRecord, LoadRun, RequestRecord


@pytest.fixture
def mock_server():
    """mock_server(**MockConfig fields) -> (base URL, the server), stopped after the test."""
    started: list[MockServer] = []

    def start(**config) -> tuple[str, MockServer]:
        server = MockServer(MockConfig(**config))
        url = server.__enter__()
        started.append(server)
        return url, server

    yield start
    for server in started:
        server.__exit__(None, None, None)


def _make_options(url: str, **overrides) -> LoadOptions:
    base_url, endpoint = split_url(url, overrides.pop("endpoint", None))
    defaults = dict(requests=8, concurrency=[2], input_tokens=16, output_tokens=8, timeout_s=10.0)
    opts = LoadOptions(base_url=base_url, endpoint=endpoint, **{**defaults, **overrides})
    check_options(opts)
    return opts


def _load(url: str, **overrides) -> LoadRun:
    opts = _make_options(url, **overrides)
    return run_load(opts, new_load_run(opts, ["test"]))


@pytest.fixture
def make_options():
    """make_options(url, **LoadOptions fields): small defaults, checked as the CLI checks them."""
    return _make_options


@pytest.fixture
def load():
    """load(url, **LoadOptions fields) -> the LoadRun of a short run against url."""
    return _load


# --- hand-built runs, for analysis and renderers -------------------------------------------


def request(i, sent, ttft, gaps, tokens, scheduled=None, error=None, warmup=False, level=0):
    first = sent + ttft
    last = first + sum(gaps)
    return RequestRecord(
        index=i, level=level, warmup=warmup, scheduled_s=sent if scheduled is None else scheduled,
        sent_s=sent, end_s=last + 0.001, first_token_s=None if error else first,
        last_token_s=None if error else last, chunk_gaps_s=[] if error else list(gaps),
        output_tokens=None if error else tokens, output_tokens_method=None if error else "usage",
        input_tokens=None if error else 10, error_kind=error,
    )  # fmt: skip


def _hand_run(slo=None, speed=1.0) -> LoadRun:
    reqs = [
        request(0, 0.0, 0.100 * speed, [0.020 * speed] * 4, 5),  # TPOT 20 ms
        request(1, 0.1, 0.300 * speed, [0.050 * speed] * 4, 5),  # TPOT 50 ms
        request(2, 0.2, 0.200 * speed, [0.010 * speed] * 9, 10, scheduled=0.0),  # 0.2 s queued
        request(3, 0.3, 0.0, [], 0, error="http_503"),
        request(4, -1.0, 9.0, [1.0], 2, warmup=True, level=-1),  # never counted
    ]
    run = LoadRun(run_id="r", created_at="now", lmprof_version="0", status="complete")
    run.settings = {"slo_s": slo or {}}
    run.levels = [LevelRecord(index=0, mode="closed", concurrency=2, start_s=0.0, end_s=2.0, cpu_s=0.2)]
    run.requests = reqs
    return run


@pytest.fixture
def hand_run():
    """hand_run(slo=None, speed=1.0) -> a fixed LoadRun of one closed-loop level: three
    requests of known TTFT and gaps (one queued 0.2 s in the client), one HTTP 503, one
    warm-up request."""
    return _hand_run
