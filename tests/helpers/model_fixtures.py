"""Fixtures of the model tests (test_models.py, test_model_resolution.py): a built `tiny` in a
module cache, an empty cache, an offline empty hub; and the one-line-error check."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmprof.errors import LmprofError
from lmprof.models import (
    ResolvedModel,
    resolve_model,
)

PROMPT = "User: Hello! How are you?\nAssistant:"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding a built `tiny`, built once for the module."""
    cache = tmp_path_factory.mktemp("lmprof-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMPROF_CACHE", str(cache))
        resolve_model("tiny", progress=False)
    return cache


@pytest.fixture
def tiny(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> ResolvedModel:
    monkeypatch.setenv("LMPROF_CACHE", str(tiny_cache))
    return resolve_model("tiny", progress=False)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LMPROF_CACHE", str(cache))
    return cache


@pytest.fixture
def offline_empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf-home" / "hub"


def raises_one_line(error_class: type[LmprofError], spec: str | None) -> str:
    with pytest.raises(error_class) as caught:
        resolve_model(spec, progress=False)
    message = str(caught.value)
    assert message and "\n" not in message
    return message
