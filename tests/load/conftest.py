"""Fixtures of the `lmprof load` tests: a mock server in a thread and a short load run
against it. Every run is bounded: a request count, a per-request timeout, loopback only."""

from __future__ import annotations

import pytest
from helpers.mock_openai_server import MockConfig, MockServer

from lmprof.load.bench import new_load_run, run_load
from lmprof.load.options import LoadOptions, check_options, split_url
from lmprof.record.load import LoadRun


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
