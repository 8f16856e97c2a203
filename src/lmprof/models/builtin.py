"""Built-in models on demand: use the cached folder, or build it once into the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmprof.models.build_progress import build_progress
from lmprof.models.cache import atomic_folder, builtin_folder, read_manifest, write_manifest
from lmprof.models.default_model import CONVERSION_RECIPE, build_default_model
from lmprof.models.presets import DEFAULT_MODEL, is_builtin_name
from lmprof.models.synthesize import SYNTHESIS_RECIPE, synthesize_preset


@dataclass(frozen=True)
class BuiltinFolder:
    folder: Path
    built_now: bool
    downloaded_bytes: int


def _expected_recipe(name: str) -> str:
    return CONVERSION_RECIPE if name == DEFAULT_MODEL else SYNTHESIS_RECIPE


def is_builtin_cached(name: str) -> bool:
    """True when `name` is a built-in model already built by the current recipe (False if unknown)."""
    if not is_builtin_name(name):
        return False
    manifest = read_manifest(builtin_folder(name))
    return manifest is not None and manifest.get("recipe") == _expected_recipe(name)


def ensure_builtin(name: str, *, progress: bool) -> BuiltinFolder:
    """The cached folder of built-in `name`, building it first when absent or built by an old recipe."""
    final = builtin_folder(name)
    if is_builtin_cached(name):
        return BuiltinFolder(final, built_now=False, downloaded_bytes=0)
    with build_progress(f"building built-in model {name!r} into {final}", enabled=progress) as phases:
        with atomic_folder(final) as scratch:
            if name == DEFAULT_MODEL:
                manifest, downloaded_bytes = build_default_model(scratch, phases)
            else:
                manifest, downloaded_bytes = synthesize_preset(name, scratch, phases), 0
            # Its recipe field is what later calls compare to decide the cache is current.
            write_manifest(scratch, manifest)
    return BuiltinFolder(final, built_now=True, downloaded_bytes=downloaded_bytes)
