"""Turn what the user typed (a built-in name, a path, or a hub id) into a loadable folder."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmprof.errors import ModelNotFoundError, UsageError
from lmprof.models.builtin import ensure_builtin
from lmprof.models.checkpoint import inspect_local_model
from lmprof.models.hub import fetch_hub_model, looks_like_hub_id
from lmprof.models.presets import DEFAULT_MODEL, builtin_names, is_builtin_name

ModelSource = Literal["builtin", "local", "hub"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder ready for AutoModelForCausalLM / AutoTokenizer.from_pretrained."""

    spec: str  # what the user typed (the default model's name when they typed nothing)
    source: ModelSource
    path: Path  # pass to from_pretrained
    gguf_file: str | None  # pass as gguf_file= when the checkpoint is a GGUF file inside `path`
    model_id: str  # for display: the preset name, the folder as typed, or the hub id
    downloaded_bytes: int  # fetched from the network during this call; 0 when cached
    built_now: bool  # a built-in model was fetched, converted or synthesized during this call


def _not_found(spec: str) -> ModelNotFoundError:
    looks_like_path = "/" in spec or "\\" in spec or spec.startswith((".", "~"))
    if looks_like_path:
        return ModelNotFoundError(
            f"no model at '{spec}': not a built-in name (run `lmprof models`), not a folder, and not a hub "
            "id (owner/name); pass a folder with config.json and *.safetensors"
        )
    suggestions = difflib.get_close_matches(spec, builtin_names(), n=1)
    hint = f"did you mean '{suggestions[0]}'? " if suggestions else ""
    return ModelNotFoundError(
        f"unknown built-in model '{spec}' and no folder by that name; {hint}"
        f"built-ins: {', '.join(builtin_names())} (run `lmprof models`)"
    )


def resolve_model(spec: str | None, *, progress: bool = True) -> ResolvedModel:
    """Find or build the model `spec` names; None means the default model.

    Order: built-in name, existing path (folder or .gguf file), hub id (`owner/name`, local
    cache first). Raises ModelNotFoundError, ModelLoadError or UsageError with a one-line message.
    """
    if spec is not None and not spec.strip():
        raise UsageError("empty model name; pass a built-in name (`lmprof models`), a folder, or owner/name")
    typed = DEFAULT_MODEL if spec is None else spec.strip()

    if is_builtin_name(typed):
        built = ensure_builtin(typed, progress=progress)
        checkpoint = inspect_local_model(typed, built.folder)
        return ResolvedModel(
            spec=typed,
            source="builtin",
            path=built.folder,
            gguf_file=checkpoint.gguf_file,
            model_id=typed,
            downloaded_bytes=built.downloaded_bytes,
            built_now=built.built_now,
        )

    path = Path(typed).expanduser()
    if path.exists():
        checkpoint = inspect_local_model(typed, path)
        return ResolvedModel(
            spec=typed,
            source="local",
            path=checkpoint.folder,
            gguf_file=checkpoint.gguf_file,
            model_id=typed,
            downloaded_bytes=0,
            built_now=False,
        )

    if looks_like_hub_id(typed):
        snapshot = fetch_hub_model(typed, progress=progress)
        checkpoint = inspect_local_model(typed, snapshot.folder)
        return ResolvedModel(
            spec=typed,
            source="hub",
            path=checkpoint.folder,
            gguf_file=checkpoint.gguf_file,
            model_id=typed,
            downloaded_bytes=snapshot.downloaded_bytes,
            built_now=False,
        )

    raise _not_found(typed)
