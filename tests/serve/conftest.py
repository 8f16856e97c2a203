import os

import pytest
from serve_helpers import load_tiny


@pytest.fixture(scope="session")
def serve_cache(lmprof_cache):
    """Built-in models for the serve tests: the session cache, also set for subprocesses."""
    old = os.environ.get("LMPROF_CACHE")
    os.environ["LMPROF_CACHE"] = str(lmprof_cache)
    yield lmprof_cache
    if old is None:
        os.environ.pop("LMPROF_CACHE", None)
    else:
        os.environ["LMPROF_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_transformers(serve_cache):
    """`tiny` loaded once for every transformers-engine server of the session."""
    return load_tiny("transformers")


@pytest.fixture(scope="session")
def tiny_engine(serve_cache):
    """`tiny` loaded once on lmprof's engine."""
    return load_tiny("lmprof")
