"""Hub ids (`owner/name`): the local Hugging Face cache first, then the network, briefly.

Environment variables (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT) are read on every
call rather than through huggingface_hub's constants, which are frozen when it is first imported.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
    filter_repo_objects,
)

from lmprof.errors import ModelLoadError, ModelNotFoundError, UsageError

# Long enough for a slow link, short enough that a blocked network fails a run in seconds.
HUB_REQUEST_TIMEOUT_S = 10.0

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_ALWAYS_FETCHED = ["*.json", "*.jinja", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]
_TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubSnapshot:
    folder: Path
    downloaded_bytes: int


def looks_like_hub_id(spec: str) -> bool:
    return _HUB_ID.fullmatch(spec) is not None and ".." not in spec


def hub_cache_dir() -> Path:
    """The huggingface_hub cache folder the environment points at right now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hub_endpoint() -> str | None:
    """The hub HF_ENDPOINT names right now (a mirror, or a test's stand-in); None: huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def hub_offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in _TRUTHY for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _transport_errors() -> tuple[type[Exception], ...]:
    """Network failures: the hub client's HTTP library varies with its version."""
    errors: list[type[Exception]] = [HfHubHTTPError, OSError]
    for module_name, class_name in (
        ("httpx2", "HTTPError"),
        ("httpx", "HTTPError"),
        ("requests", "RequestException"),
    ):
        try:
            errors.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError):
        return None


def _has_config_and_weights(folder: Path) -> bool:
    weights = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
    return (folder / "config.json").is_file() and any(any(folder.glob(pattern)) for pattern in weights)


def _patterns_to_fetch(repo_id: str, files: list[str]) -> list[str]:
    """Config, tokenizer and one kind of weights: not every format a repo happens to carry."""
    if any(name.endswith(".safetensors") for name in files):
        return [*_ALWAYS_FETCHED, "*.safetensors"]
    if any(re.fullmatch(r"pytorch_model.*\.bin", name) for name in files):
        return [*_ALWAYS_FETCHED, "pytorch_model*.bin"]
    ggufs = [name for name in files if name.endswith(".gguf")]
    if len(ggufs) == 1:
        return [*_ALWAYS_FETCHED, ggufs[0]]
    if ggufs:
        raise UsageError(
            f"hub model '{repo_id}' has {len(ggufs)} GGUF files; download one "
            f"(`hf download {repo_id} FILE.gguf`) and pass its path"
        )
    raise ModelLoadError(f"hub model '{repo_id}' has no *.safetensors, pytorch_model*.bin or *.gguf weights")


def _repo_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / f"models--{repo_id.replace('/', '--')}"


def _blob_sizes(cache_dir: Path, repo_id: str) -> dict[str, int]:
    blobs = _repo_folder(cache_dir, repo_id) / "blobs"
    if not blobs.is_dir():
        return {}
    return {
        path.name: path.stat().st_size for path in blobs.iterdir() if not path.name.endswith(".incomplete")
    }


def _remember_default_revision(cache_dir: Path, repo_id: str, commit: str) -> None:
    """Write refs/main, as a download of "main" would: fetched by commit, the snapshot is
    otherwise found only online, and the next run (or one with HF_HUB_OFFLINE) misses it."""
    refs = _repo_folder(cache_dir, repo_id) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(commit)


@contextmanager
def _hub_bars(enabled: bool) -> Iterator[None]:
    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def fetch_hub_model(repo_id: str, *, progress: bool) -> HubSnapshot:
    """The snapshot folder of `repo_id`, downloading only what the local cache lacks."""
    cache_dir = hub_cache_dir()
    cached = _cached_snapshot(repo_id, cache_dir)
    if cached is not None and (_has_config_and_weights(cached) or hub_offline()):
        return HubSnapshot(cached, 0)
    if hub_offline():
        raise ModelNotFoundError(
            f"no model at '{repo_id}': not a folder, and as a hub id not in the local Hugging Face cache "
            f"({cache_dir}) while HF_HUB_OFFLINE is set; unset it to download, or pass a local model folder"
        )

    before = _blob_sizes(cache_dir, repo_id)
    endpoint = hub_endpoint()
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, timeout=HUB_REQUEST_TIMEOUT_S)
        files = [sibling.rfilename for sibling in info.siblings or []]
        wanted = list(filter_repo_objects(files, allow_patterns=_patterns_to_fetch(repo_id, files)))
        with _hub_bars(progress):
            # One file after another in this thread, not snapshot_download's thread pool: a
            # profile records phases from its own thread only, so each file's `download` phase
            # (collect/instrument.py) would go unseen from a pool thread.
            for name in wanted:
                hf_hub_download(
                    repo_id,
                    name,
                    revision=info.sha,
                    cache_dir=cache_dir,
                    endpoint=endpoint,
                    etag_timeout=HUB_REQUEST_TIMEOUT_S,
                )
        if info.sha:
            _remember_default_revision(cache_dir, repo_id, info.sha)
        folder = snapshot_download(repo_id, revision=info.sha, cache_dir=cache_dir, local_files_only=True)
    except GatedRepoError as error:
        raise ModelNotFoundError(
            f"hub model '{repo_id}' is gated; accept its licence on huggingface.co and set HF_TOKEN"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"no hub model '{repo_id}' (or it is private: set HF_TOKEN); check the id, "
            "or run `lmprof models` for built-in names"
        ) from error
    except _transport_errors() as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelNotFoundError(
            f"no model at '{repo_id}': not a folder, and as a hub id not in the local Hugging Face cache "
            f"({cache_dir}) with the hub unreachable ({reason}); pass a local folder or a built-in name "
            "(`lmprof models`)"
        ) from error
    after = _blob_sizes(cache_dir, repo_id)
    downloaded = sum(size for name, size in after.items() if name not in before)
    return HubSnapshot(Path(folder), downloaded)
