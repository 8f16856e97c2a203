"""Progress bars on stderr while a built-in model is fetched, converted or synthesized.

Builds are the only slow, silent part of model resolution (seconds to a minute), so they
show phases with rich; everything else in lmprof.models prints nothing. The third-party
tqdm bars of transformers and huggingface_hub are muted meanwhile so the two don't fight
over the terminal.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from transformers.utils import logging as transformers_logging


class Phase:
    """One line of the display: a description and, when the total is known, a bar."""

    def __init__(self, progress: Progress | None, task: TaskID | None, unit: str) -> None:
        self._progress = progress
        self._task = task
        self._unit = unit

    def update(self, completed: float, total: float | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        shown_total = total if total is not None else self._progress.tasks[self._task].total
        if shown_total is not None:
            shown_total = max(shown_total, completed)  # file headers overshoot a parameter-bytes total
        self._progress.update(
            self._task,
            completed=completed,
            total=shown_total,
            detail=_detail(completed, shown_total, self._unit),
        )


def _detail(completed: float, total: float | None, unit: str) -> str:
    if unit == "bytes":
        done = filesize.decimal(int(completed))
        return f"{done} / {filesize.decimal(int(total))}" if total else done
    return f"{completed:,.0f}/{total:,.0f} {unit}" if total else ""


class BuildProgress:
    """Phases of one build; a no-op when constructed without a rich Progress."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    @contextmanager
    def phase(self, description: str, total: float | None = None, unit: str = "") -> Iterator[Phase]:
        if self._progress is None:
            yield Phase(None, None, unit)
            return
        task = self._progress.add_task(description, total=total, detail=_detail(0, total, unit))
        yield Phase(self._progress, task, unit)
        finished = self._progress.tasks[task]
        final = finished.total if finished.total is not None else 1
        self._progress.update(task, completed=final, total=final)


@contextmanager
def _third_party_bars_muted() -> Iterator[None]:
    hub_was_disabled = are_progress_bars_disabled()
    transformers_was_enabled = transformers_logging.is_progress_bar_enabled()
    disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_was_disabled:
            enable_progress_bars()
        if transformers_was_enabled:
            transformers_logging.enable_progress_bar()


@contextmanager
def build_progress(title: str, *, enabled: bool) -> Iterator[BuildProgress]:
    """Show a titled group of phases on stderr while the block runs (nothing when disabled)."""
    with _third_party_bars_muted():
        if not enabled:
            yield BuildProgress(None)
            return
        # Bound to today's stderr, so redirecting sys.stderr later (to mute a library) keeps us visible.
        console = Console(file=sys.stderr)
        console.print(f"[bold]{title}[/bold]", soft_wrap=True)
        columns = (
            SpinnerColumn(finished_text="[green]done[/green]"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, redirect_stdout=False, redirect_stderr=False) as progress:
            yield BuildProgress(progress)


@contextmanager
def folder_bytes_watched(
    phase: Phase, folder: Path, pattern: str = "*", interval_s: float = 0.25
) -> Iterator[None]:
    """Report the bytes of files matching `pattern` under `folder` to `phase` while a library writes them.

    transformers and pip write files without a progress callback, so growth on disk is the
    honest measure of how far along they are.
    """
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval_s):
            phase.update(_folder_bytes(folder, pattern))

    watcher = threading.Thread(target=poll, name="lmprof-folder-bytes", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        phase.update(_folder_bytes(folder, pattern))


def _folder_bytes(folder: Path, pattern: str) -> int:
    total = 0
    for path in folder.rglob(pattern):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # a file renamed or deleted between listing and stat
            continue
    return total
