import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers.engine_models import model_dirs, wide_head_dirs  # noqa: F401 (the engine tests' tiny checkpoints, fixtures)
from helpers.model_fixtures import empty_cache, offline_empty_hub, tiny, tiny_cache  # noqa: F401 (the model tests' fixtures)

REPO = Path(__file__).resolve().parents[1]

# One build of lmprof's native decode kernels per test session, shared by the tests and the
# lmprof processes they start, and kept out of the user's cache.
_OWN_NATIVE_BUILD = None
if "LMPROF_NATIVE_BUILD" not in os.environ:
    _OWN_NATIVE_BUILD = tempfile.mkdtemp(prefix="lmprof-native-build-")
    os.environ["LMPROF_NATIVE_BUILD"] = _OWN_NATIVE_BUILD


def pytest_sessionfinish(session, exitstatus):
    if _OWN_NATIVE_BUILD is not None:
        shutil.rmtree(_OWN_NATIVE_BUILD, ignore_errors=True)


@pytest.fixture(scope="session")
def lmprof_cache(tmp_path_factory):
    """A private built-in model cache for the test session (tiny builds in about a second)."""
    return tmp_path_factory.mktemp("lmprof-cache")


@pytest.fixture(scope="session")
def tiny_model(lmprof_cache):
    """The `tiny` preset (Llama architecture, random weights) built for this test session."""
    from lmprof.models import resolve_model

    old = os.environ.get("LMPROF_CACHE")
    os.environ["LMPROF_CACHE"] = str(lmprof_cache)
    try:
        return resolve_model("tiny", progress=False).path
    finally:
        if old is None:
            os.environ.pop("LMPROF_CACHE", None)
        else:
            os.environ["LMPROF_CACHE"] = old


@pytest.fixture
def run_cli(lmprof_cache):
    """Run the real `lmprof` console entry point in a fresh process (as a user would)."""

    def run(*args, timeout=600, env_extra=None, cwd=None):
        env = dict(os.environ, LMPROF_CACHE=str(lmprof_cache), **(env_extra or {}))
        return subprocess.run(
            [sys.executable, "-m", "lmprof", *map(str, args)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or REPO,
        )  # fmt: skip

    return run


E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config, items):
    """Whole commands are `slow`: everything in tests/e2e/ and every test that starts lmprof in
    a fresh process (`run_cli`), seconds of imports each; `-m "not slow"` is the fast path.
    Tests marked `gpu` skip cleanly where torch sees no CUDA device."""
    import torch

    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if E2E in Path(item.fspath).parents or "run_cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture
def no_terminal(monkeypatch, capsys):
    """stdout is no terminal (captured, even under `pytest -s`) and rich finds no terminal size
    on any stream: it draws 80 columns."""
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)

    def no_size(*args):
        raise OSError("not a terminal")

    monkeypatch.setattr(os, "get_terminal_size", no_size)


@pytest.fixture(scope="module")
def ops():
    """lmprof's native kernels, built once per test session (LMPROF_NATIVE_BUILD, above)."""
    from lmprof.engine import native as native_build

    missing = native_build._missing_tools()
    if missing:  # a failing build is a failure; only a machine without the tools skips
        pytest.skip(f"no {' or '.join(missing)} to build the native kernels")
    return native_build.load_native_ops()


@pytest.fixture
def needs_w8a8():
    """Skips where the CPU has no W8A8 products (neither AVX2 nor AVX512-VNNI)."""
    from lmprof.engine.native import cpu_has_w8a8

    if not cpu_has_w8a8():
        pytest.skip("this CPU has neither AVX2 nor AVX512-VNNI")
