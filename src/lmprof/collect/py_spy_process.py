"""One `py-spy record` child reading this process: started, waited on until it has attached,
and its log read. The sampling py-spy and the timeline py-spy both start here."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

ATTACH_TIMEOUT_S = 15.0  # py-spy retries attaching for a while before it gives up
STOP_TIMEOUT_S = 60.0  # writing the file, and resolving native symbols, takes seconds
_POLL_S = 0.005
_ATTACHED_LINE = "Sampling process"  # py-spy prints this once it has attached


def spawn_recorder(
    py_spy: Path, args: Sequence[str], log_path: Path, attach_timeout_s: float = ATTACH_TIMEOUT_S
) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    """`py-spy record --pid <this process> ARGS`, once it has attached: (the process, None),
    or (None, why it did not attach)."""
    cmd = [str(py_spy), "record", "--pid", str(os.getpid()), *args]
    with open(log_path, "wb") as log:
        try:
            # A session of its own: a Ctrl-C at the terminal reaches lmprof, which then
            # stops py-spy itself, so the profile of an interrupted run is still written.
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            return None, f"cannot run '{py_spy}': {exc.strerror}"
    deadline = time.monotonic() + attach_timeout_s
    while time.monotonic() < deadline:
        if _ATTACHED_LINE in read_text(log_path):
            return proc, None
        if proc.poll() is not None:
            return None, last_line(read_text(log_path)) or f"py-spy exited with status {proc.returncode}"
        time.sleep(_POLL_S)
    proc.kill()
    proc.wait()
    return None, f"py-spy did not start sampling within {attach_timeout_s:.0f} s"


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("py-spy> ") if lines else ""
