"""lmprof.models: resolving local folders, GGUF files and hub ids, and their one-line errors."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.llama_gguf import llama_gguf_writer, write_llama_tensors
from helpers.local_hub import UNFETCHED, HubRepo, LocalHub, add_model_repo
from helpers.model_fixtures import PROMPT, raises_one_line
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmprof.errors import ModelLoadError, ModelNotFoundError, UsageError
from lmprof.models import (
    ResolvedModel,
    resolve_model,
)

# ---------------------------------------------------------------- local folders and files


def test_local_folder_resolves_to_itself(tiny: ResolvedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.path, tmp_path / "my-model")
    resolved = resolve_model(str(folder), progress=False)
    assert (resolved.source, resolved.path, resolved.gguf_file) == ("local", folder, None)
    assert resolved.model_id == str(folder) and resolved.downloaded_bytes == 0


def _write_gguf(model_folder: Path, target: Path) -> None:
    """Write the tiny Llama in `model_folder` as a float32 GGUF file, as llama.cpp's converter would."""
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    config = model.config
    tokenizer_spec = json.loads(AutoTokenizer.from_pretrained(model_folder).backend_tokenizer.to_str())
    writer = llama_gguf_writer(target, config)
    vocab = tokenizer_spec["model"]["vocab"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([3 if token_id < 3 else 1 for token_id in range(len(vocab))])
    writer.add_token_merges([" ".join(merge) for merge in tokenizer_spec["model"]["merges"]])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    write_llama_tensors(writer, model)


def test_gguf_only_folder_and_gguf_file_resolve_to_a_loadable_gguf(
    tiny: ResolvedModel, tmp_path: Path
) -> None:
    folder = tmp_path / "gguf-only"
    folder.mkdir()
    _write_gguf(tiny.path, folder / "tiny.f32.gguf")

    by_folder = resolve_model(str(folder), progress=False)
    by_file = resolve_model(str(folder / "tiny.f32.gguf"), progress=False)
    assert (by_folder.path, by_folder.gguf_file) == (folder, "tiny.f32.gguf")
    assert (by_file.path, by_file.gguf_file) == (folder, "tiny.f32.gguf")

    from_gguf = AutoModelForCausalLM.from_pretrained(by_folder.path, gguf_file=by_folder.gguf_file)
    from_safetensors = AutoModelForCausalLM.from_pretrained(tiny.path)
    input_ids = AutoTokenizer.from_pretrained(tiny.path)(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(input_ids).logits, from_safetensors(input_ids).logits)


def test_folder_with_several_gguf_files_asks_for_one(tmp_path: Path) -> None:
    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        (tmp_path / name).write_bytes(b"GGUF" + bytes(16))
    message = raises_one_line(UsageError, str(tmp_path))
    assert "a.Q4_0.gguf" in message


def test_file_without_gguf_magic_is_a_load_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>not found</html>")
    assert str(fake) in raises_one_line(ModelLoadError, str(fake))


def test_corrupt_safetensors_is_named(tiny: ResolvedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.path, tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert str(weights) in raises_one_line(ModelLoadError, str(folder))


def test_missing_shard_is_named(tiny: ResolvedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.path, tmp_path / "sharded")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert "model-00002-of-00002.safetensors" in raises_one_line(ModelLoadError, str(folder))


def test_folder_without_weights_is_a_load_error(tiny: ResolvedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.path, tmp_path / "no-weights")
    (folder / "model.safetensors").unlink()
    assert "no weights" in raises_one_line(ModelLoadError, str(folder))


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert "config.json" in raises_one_line(ModelNotFoundError, str(tmp_path))


def test_plain_file_is_a_usage_error(tiny: ResolvedModel) -> None:
    raises_one_line(UsageError, str(tiny.path / "config.json"))


def test_missing_path_is_not_found(empty_cache: Path) -> None:
    message = raises_one_line(ModelNotFoundError, "./no-such-model")
    assert "./no-such-model" in message and "lmprof models" in message


def test_misspelt_builtin_name_suggests_the_right_one(empty_cache: Path) -> None:
    message = raises_one_line(ModelNotFoundError, "smollm2-135")
    assert "smollm2-135m" in message


def test_blank_spec_is_a_usage_error() -> None:
    raises_one_line(UsageError, "  ")


# ---------------------------------------------------------------- hub ids


def test_hub_id_offline_with_empty_cache_fails_fast(offline_empty_hub: Path) -> None:
    start_s = time.perf_counter()
    message = raises_one_line(ModelNotFoundError, "someone/some-model")
    assert time.perf_counter() - start_s < 2.0
    assert "someone/some-model" in message and "HF_HUB_OFFLINE" in message


def _cache_snapshot(hub_cache: Path, repo_id: str, source: Path) -> Path:
    """Lay `source` out as huggingface_hub's cache does: refs/main -> snapshots/<commit>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_folder = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo_folder / "refs").mkdir(parents=True)
    (repo_folder / "refs" / "main").write_text(commit)
    return Path(shutil.copytree(source, repo_folder / "snapshots" / commit))


def test_cached_hub_id_resolves_offline_without_downloading(
    tiny: ResolvedModel, offline_empty_hub: Path
) -> None:
    snapshot = _cache_snapshot(offline_empty_hub, "someone/tiny", tiny.path)
    resolved = resolve_model("someone/tiny", progress=False)
    assert (resolved.source, resolved.path, resolved.model_id) == ("hub", snapshot, "someone/tiny")
    assert resolved.downloaded_bytes == 0


@pytest.fixture
def local_hub(
    tiny: ResolvedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalHub, HubRepo]]:
    """someone/tiny (the `tiny` preset's files and a README) on a stand-in hub that HF_ENDPOINT
    names, with an empty Hugging Face cache under tmp_path."""
    with LocalHub() as local:
        repo = add_model_repo(local, "someone/tiny", tiny.path)
        for name, value in local.environment(tmp_path / "hf-home").items():
            monkeypatch.setenv(name, value)
        yield local, repo


def test_the_stand_in_hub_serves_snapshot_download(
    local_hub: tuple[LocalHub, HubRepo], tmp_path: Path
) -> None:
    local, repo = local_hub
    folder = Path(snapshot_download("someone/tiny", cache_dir=tmp_path / "plain", endpoint=local.endpoint))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {
        name: f.data for name, f in repo.files.items()
    }
    assert ("cdn", "GET") in {(origin, method) for origin, method, _ in local.requests}  # weights: redirected


def test_hub_id_downloads_what_a_load_needs_once(
    local_hub: tuple[LocalHub, HubRepo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, repo = local_hub
    blobs = tmp_path / "hf-home" / "hub" / "models--someone--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "already-there").write_bytes(bytes(5000))  # in the cache before: not downloaded now
    fetched = set(repo.files) - UNFETCHED

    resolved = resolve_model("someone/tiny", progress=False)
    assert (resolved.source, resolved.model_id, resolved.path.name) == ("hub", "someone/tiny", repo.sha)
    assert {p.name for p in resolved.path.iterdir()} == fetched
    assert resolved.downloaded_bytes == repo.fetched_bytes(fetched)

    # Cached now: found again without a request, and with the network off.
    requests_before = len(local.requests)
    again = resolve_model("someone/tiny", progress=False)
    assert (again.path, again.downloaded_bytes) == (resolved.path, 0)
    assert len(local.requests) == requests_before
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someone/tiny", progress=False).path == resolved.path


def test_hub_id_the_hub_does_not_have_is_a_one_line_not_found(local_hub: tuple[LocalHub, HubRepo]) -> None:
    message = raises_one_line(ModelNotFoundError, "someone/missing")
    assert "no hub model 'someone/missing'" in message


def test_unreachable_hub_is_a_one_line_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start_s = time.perf_counter()
    message = raises_one_line(ModelNotFoundError, "someone/some-model")
    assert time.perf_counter() - start_s < 2.0
    assert "unreachable" in message and "someone/some-model" in message
