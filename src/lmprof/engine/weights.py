"""Load a local Hugging Face model folder into the engine, keeping one copy of the weights.

The model is built on the meta device (no memory), each tensor is read once from the
safetensors files (single file or shards listed in model.safetensors.index.json), converted
to the run dtype and assigned in place; a tied output head shares the embedding tensor.
A folder holding only a .gguf file goes through transformers, which dequantizes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from lmprof.engine.config import EngineConfig
from lmprof.engine.huge_pages import check_huge_pages_on, move_to_huge_pages
from lmprof.engine.model import Transformer
from lmprof.engine.options import EngineOptions
from lmprof.engine.quant import quantize_int8
from lmprof.errors import ModelLoadError, ModelNotFoundError

# HF name -> engine name; per-layer names are relative to model.layers.{i}.
_TOP_LEVEL_NAMES = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "input_layernorm": "attention_norm",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.o_proj": "attention.o_proj",
    "post_attention_layernorm": "mlp_norm",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_LAYER_PATTERN = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")


def engine_name(hf_name: str) -> str | None:
    """The engine parameter a HF tensor name maps to; None for tensors the engine does not use."""
    if hf_name in _TOP_LEVEL_NAMES:
        return _TOP_LEVEL_NAMES[hf_name]
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None  # recomputed from the config
    match = _LAYER_PATTERN.fullmatch(hf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ModelLoadError(f"unexpected tensor {hf_name!r}: not a llama/qwen2 decoder weight")
    layer, module, kind = match.groups()
    return f"layers.{layer}.{_LAYER_NAMES[module]}.{kind}"


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(f"no config.json in {folder}")
    return json.loads(path.read_text())


def eos_token_ids(folder: str | Path) -> list[int]:
    """End-of-sequence ids from generation_config.json, else config.json (empty if neither says)."""
    for name in ("generation_config.json", "config.json"):
        path = Path(folder) / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return [eos] if isinstance(eos, int) else list(eos)
    return []


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _safetensors_tensors(files: list[Path], device: str) -> Iterator[tuple[str, Tensor]]:
    for file in files:
        with safe_open(str(file), framework="pt", device=device) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


def _gguf_config_and_tensors(folder: Path, gguf: Path) -> tuple[dict[str, Any], Iterator[tuple[str, Tensor]]]:
    # transformers dequantizes the GGUF into a float model; we take its tensors and drop the rest.
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf.name, dtype=torch.float32)
    return hf_model.config.to_dict(), iter(hf_model.state_dict().items())


def load_hf_folder(
    folder: str | Path, options: EngineOptions | None = None, device: str = "cpu"
) -> Transformer:
    """Build the engine for a HF folder (config.json + safetensors, or a lone .gguf)."""
    folder = Path(folder)
    options = options or EngineOptions()
    if not folder.is_dir():
        raise ModelNotFoundError(f"no model folder at {folder}")
    if options.huge_pages:  # before reading any weight: a refusal should not cost a load
        check_huge_pages_on(device)
    files = _safetensors_files(folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if files:
        hf_config = read_hf_config(folder)
        tensors = _safetensors_tensors(files, device)
    elif ggufs:
        hf_config, tensors = _gguf_config_and_tensors(folder, ggufs[0])
    else:
        raise ModelLoadError(f"no model.safetensors, safetensors index or .gguf file in {folder}")

    config = EngineConfig.from_hf_config(hf_config)
    with torch.device("meta"):
        model = Transformer(config, options)
    state: dict[str, Tensor] = {}
    for hf_name, tensor in tensors:
        name = engine_name(hf_name)
        if name is None:
            continue
        if config.tie_embeddings and name == "lm_head.weight":
            # A tied checkpoint may store the shared tensor under either name (safetensors keeps one).
            if "embed_tokens.weight" in state:
                continue
            name = "embed_tokens.weight"
        state[name] = tensor.to(device=device, dtype=options.torch_dtype)
    if config.tie_embeddings:
        state["lm_head.weight"] = state.get("embed_tokens.weight", torch.empty(0))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ModelLoadError(f"weights in {folder} do not fit the config: {error}") from error
    del state
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # assign=True made two Parameters; share one
    model.inv_freq = model.inv_freq.to(device)
    model.requires_grad_(False).eval()
    return apply_load_switches(model, options)


def apply_load_switches(model: Transformer, options: EngineOptions) -> Transformer:
    """The switches that rewrite weights after loading: fusion, then int8 or column-major, then
    the move onto huge pages (last, so it moves the tensors the model will run)."""
    if options.fuse_qkv or options.fuse_gate_up:
        model.fuse_projections(qkv=options.fuse_qkv, gate_up=options.fuse_gate_up)
    if options.int8:
        quantize_int8(model)
        if options.int8_activations:  # the native W8A8 step's weight-row sums, now, not in a decode step
            from lmprof.engine.native_decode import prepare_w8a8

            prepare_w8a8(model)
    elif options.column_major:
        model.store_column_major()
    if options.huge_pages:
        model.huge_page_placement = move_to_huge_pages(model)
    return model
