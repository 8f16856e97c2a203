"""Where built-in models live on disk, and how a build lands there atomically.

A built-in model folder exists under `cache_root()/models/<name>/` only once it is complete:
builds happen in a hidden sibling folder that is renamed into place at the end, so an
interrupted build leaves nothing that looks like a model. The folder's `lmprof_model.json`
says what it is and which recipe built it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

MANIFEST_NAME = "lmprof_model.json"
_BUILDING_PREFIX = ".building-"


def cache_root() -> Path:
    """$LMPROF_CACHE if set, else $XDG_CACHE_HOME/lmprof, else ~/.cache/lmprof (read on every call)."""
    explicit = os.environ.get("LMPROF_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lmprof"


def builtin_folder(name: str) -> Path:
    return cache_root() / "models" / name


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's lmprof_model.json, or None when it is missing or unreadable."""
    try:
        return json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _remove_abandoned_builds(parent: Path, name: str) -> None:
    """Delete build folders of `name` left by processes that no longer run (killed mid-build)."""
    for candidate in parent.glob(f"{_BUILDING_PREFIX}{name}-*"):
        pid_text = candidate.name.removeprefix(f"{_BUILDING_PREFIX}{name}-").split("-", 1)[0]
        if pid_text.isdigit() and not psutil.pid_exists(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _building_prefix(final: Path) -> str:
    return f"{_BUILDING_PREFIX}{final.name}-{os.getpid()}-"


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield an empty scratch folder; on success it replaces `final`, on any error it is deleted.

    The scratch folder is a sibling of `final` so the closing rename stays on one file system.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(final.parent, final.name)
    scratch = Path(tempfile.mkdtemp(prefix=_building_prefix(final), dir=final.parent))
    scratch.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        yield scratch
        for written in scratch.rglob("*"):
            if written.is_file():
                written.chmod(0o644)  # safetensors writes 0600; the cache is meant to be shared
        if final.exists():
            # An older recipe's folder (or a concurrent build's): move it aside, then drop it.
            retired = Path(tempfile.mkdtemp(prefix=_building_prefix(final), dir=final.parent))
            os.replace(final, retired / final.name)
            os.replace(scratch, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(scratch, final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
