"""How every record lmprof saves reaches the disk and comes back: RUN_DIR/run.json written
atomically (a reader sees the old file or the whole new one), read back with one clear error
when it cannot be, and its kind told from its first bytes, so `lmprof show` and `compare`
can hand a load, serve or throughput record to its own renderer without parsing it twice.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from lmprof.errors import RunFileError, UsageError

RUN_FILE = "run.json"

# Records other than a profile's Run write their kind first ({"kind": "load", ...}).
_KIND_FIRST = re.compile(r'^\s*\{\s*"kind"\s*:\s*"([a-z_]+)"')


def write_atomic(path: Path, text: str) -> Path:
    """Write text so that readers see the old file or the whole new one, never half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_record(run_dir: str | os.PathLike[str], text: str, file_name: str = RUN_FILE) -> Path:
    """RUN_DIR/run.json (or `file_name`), written atomically; the folder is made, or one line
    says why not."""
    folder = Path(run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create output folder '{folder}': {exc.strerror}; pass --out to a writable folder"
        ) from exc
    return write_atomic(folder / file_name, text)


def record_path(location: str | os.PathLike[str], file_name: str = RUN_FILE) -> Path:
    """A run folder's run.json (or `file_name`), or the file itself."""
    path = Path(location)
    return path / file_name if path.is_dir() else path


def read_record(
    location: str | os.PathLike[str], written_by: str, file_name: str = RUN_FILE
) -> dict[str, Any]:
    """The JSON object in a run folder's run.json (or `file_name`), or in the file itself;
    RunFileError (one line) where there is none. `written_by` names the command whose --out
    folder it should be."""
    path = record_path(location, file_name)
    if not path.is_file():
        raise RunFileError(f"no run record at '{path}': pass a folder written by `{written_by}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"'{path}' is not a readable run record: {exc}") from exc
    if not isinstance(data, dict):
        raise RunFileError(f"'{path}' is not a run record: expected a JSON object")
    return data


def record_kind(location: str | os.PathLike[str]) -> str | None:
    """The kind a record names first ("load", "serve"...), from its first bytes; None for a
    profile's Run and for anything unreadable (the Run's reader then says what is wrong)."""
    try:
        with open(record_path(location), encoding="utf-8") as fh:
            match = _KIND_FIRST.match(fh.read(256))
    except (OSError, UnicodeDecodeError):
        return None
    return match.group(1) if match else None
