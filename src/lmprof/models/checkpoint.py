"""What a local model path holds, checked cheaply before anything is loaded.

A profile run should fail in milliseconds with a clear message, not after a long load:
this finds the config and weights, reads safetensors headers (not tensors) and the GGUF
magic number, and says which file is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from lmprof.errors import ModelLoadError, ModelNotFoundError, UsageError

GGUF_MAGIC = b"GGUF"
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class LocalCheckpoint:
    """A folder from_pretrained can load, and the GGUF file inside it when that is the checkpoint."""

    folder: Path
    gguf_file: str | None


def _check_gguf(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as error:
        raise ModelLoadError(f"cannot read GGUF file '{path}': {error.strerror}") from error
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"'{path}' is not a GGUF file (it does not start with 'GGUF'); re-download it")


def _check_safetensors(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
            handle.metadata()
    except (SafetensorError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(
            f"corrupt safetensors file '{path}' ({message}); re-download or rebuild the model"
        ) from error


def _check_index(folder: Path, index_name: str) -> None:
    index_path = folder / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"unreadable shard index '{index_path}'; re-download the model") from error
    missing = sorted({shard for shard in weight_map.values() if not (folder / shard).is_file()})
    if missing:
        raise ModelLoadError(
            f"shard '{missing[0]}' listed in '{index_path}' is missing ({len(missing)} missing in all); "
            "re-download the model"
        )


def _single_gguf(spec: str, folder: Path, ggufs: list[Path]) -> LocalCheckpoint:
    if len(ggufs) > 1:
        names = ", ".join(path.name for path in ggufs)
        raise UsageError(f"'{spec}' holds {len(ggufs)} GGUF files ({names}); pass the path of one of them")
    _check_gguf(ggufs[0])
    return LocalCheckpoint(folder, ggufs[0].name)


def inspect_local_model(spec: str, path: Path) -> LocalCheckpoint:
    """Check that the existing `path` is a loadable model; raise a one-line lmprof error if not."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UsageError(
                f"'{spec}' is a file; pass the model folder (config.json + weights) or a .gguf file"
            )
        _check_gguf(path)
        return LocalCheckpoint(path.parent, path.name)

    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file():
        if ggufs:  # a GGUF file carries its own config and tokenizer
            return _single_gguf(spec, path, ggufs)
        raise ModelNotFoundError(
            f"'{spec}' is a folder but not a model folder (no config.json); "
            "pass a folder with config.json and *.safetensors, or a .gguf file"
        )

    for index_name in _INDEX_FILES:
        if (path / index_name).is_file():
            _check_index(path, index_name)
    safetensors_files = sorted(path.glob("*.safetensors"))
    for weights in safetensors_files:
        _check_safetensors(weights)
    if safetensors_files or any(path.glob("pytorch_model*.bin")):
        return LocalCheckpoint(path, None)
    if ggufs:
        return _single_gguf(spec, path, ggufs)
    raise ModelLoadError(
        f"no weights in '{spec}': config.json is there but no *.safetensors, pytorch_model*.bin or *.gguf file; "
        "copy the weight files into the folder"
    )
