"""Random-weight built-in models: a real architecture, seeded weights, a local tokenizer.

The result is an ordinary Hugging Face folder written by `save_pretrained` (float32
safetensors, sharded when large), so loading it exercises the same from_pretrained path as
any downloaded model. Peak memory is about one copy of the weights plus one shard being
written (6.3 GB peak RSS measured for llama-3.2-1b, whose weights are 4.9 GB).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lmprof.models.build_progress import BuildProgress, folder_bytes_watched
from lmprof.models.presets import SYNTHESIS_SEED, parameter_count, preset_config
from lmprof.models.tokenizer import (
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    TOKENIZER_RECIPE_VERSION,
    build_tokenizer,
)

# Bump when the weights or files a preset produces would change; cached copies then rebuild.
SYNTHESIS_RECIPE = f"synthesize-v1/tokenizer-v{TOKENIZER_RECIPE_VERSION}"

# Several shards for the large presets, as on the hub, so sharded loading is what gets profiled.
MAX_SHARD_SIZE = "1GB"

FLOAT32_BYTES = 4


def check_tokenizer_matches_model(folder: Path) -> None:
    """Fail the build if AutoTokenizer does not load exactly the model's vocabulary from `folder`.

    transformers picks the tokenizer class from the config's model_type and may rebuild the
    tokenizer around our vocabulary (it does for qwen2); a token it appends would be an id
    with no embedding row.
    """
    vocab_size = AutoConfig.from_pretrained(folder).vocab_size
    loaded = len(AutoTokenizer.from_pretrained(folder))
    if loaded != vocab_size:
        raise RuntimeError(
            f"the tokenizer saved in {folder} loads with {loaded} ids under transformers "
            f"{transformers.__version__}, but the model has {vocab_size}; lmprof needs an update"
        )


def synthesize_preset(name: str, folder: Path, progress: BuildProgress) -> dict[str, Any]:
    """Write the random-weight preset `name` into the empty `folder`; return its manifest."""
    config = preset_config(name)
    with progress.phase("tokenizer (byte-level BPE)"):
        tokenizer = build_tokenizer(config.vocab_size, model_max_length=config.max_position_embeddings)
        tokenizer.save_pretrained(folder)
        config.save_pretrained(folder)
        check_tokenizer_matches_model(folder)

    parameters = parameter_count(config)
    with progress.phase(f"random weights ({parameters / 1e6:,.1f}M, seed {SYNTHESIS_SEED})"):
        torch.manual_seed(SYNTHESIS_SEED)
        # Weights are drawn by the model's own _init_weights: normal(0, initializer_range).
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config = GenerationConfig(
            bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID
        )

    with progress.phase("writing safetensors", total=parameters * FLOAT32_BYTES, unit="bytes") as phase:
        with folder_bytes_watched(phase, folder, "*.safetensors"):
            model.save_pretrained(folder, max_shard_size=MAX_SHARD_SIZE)

    return {
        "name": name,
        "built_by": "synthesized",
        "recipe": SYNTHESIS_RECIPE,
        "seed": SYNTHESIS_SEED,
        "architecture": config.architectures[0],
        "parameter_count": parameters,
        "dtype": "float32",
        "trained": False,
        "tokenizer": f"byte-level BPE trained on lmprof's embedded corpus, padded to {config.vocab_size} ids",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
