"""Run groups: one or more saved repeats of the same configuration, as `lmprof compare` reads them.

A command-line argument names a group: a run folder or a run.json path is a group of
one; a folder whose subfolders each hold a run.json is a group of repeats (the subfolders
in name order). The group itself is plain data, so analysis can be tested on hand-built
Runs without touching a disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lmprof.errors import RunFileError
from lmprof.record.files import RUN_FILE
from lmprof.record.run import Run, load_run


@dataclass
class RunGroup:
    """Repeats of one configuration. `source` says where they came from, for the reader."""

    runs: list[Run]
    source: str = ""
    run_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("a run group needs at least one run")


def load_run_group(location: str | os.PathLike[str]) -> RunGroup:
    """Read a run folder, a run.json path, or a folder of run folders (repeats)."""
    path = Path(location)
    if path.is_file() or (path / RUN_FILE).is_file():
        return RunGroup(runs=[load_run(path)], source=str(location), run_paths=[str(path)])
    if path.is_dir():
        repeats = sorted(child for child in path.iterdir() if (child / RUN_FILE).is_file())
        if repeats:
            return RunGroup(
                runs=[load_run(child) for child in repeats],
                source=str(location),
                run_paths=[str(child) for child in repeats],
            )
        raise RunFileError(
            f"no run record in '{path}': expected {RUN_FILE} there or in its subfolders (one per repeat run)"
        )
    raise RunFileError(
        f"no run at '{path}': pass a folder written by `lmprof profile --out`, or its run.json"
    )
