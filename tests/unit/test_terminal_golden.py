"""Golden output of the terminal summary on a fixed, hand-built Run (fixed width, no colour).

Regenerate after an intended change with: LMPROF_UPDATE_GOLDEN=1 pytest tests/unit/test_terminal_golden.py
"""

import os
from pathlib import Path

from helpers.runs_for_tests import sample_run
from rich.console import Console

from lmprof.render.terminal import render_run

GOLDEN = Path(__file__).parents[1] / "golden" / "summary.txt"


def render_text(run, run_dir=None) -> str:
    console = Console(width=100, color_system=None, record=True, file=open(os.devnull, "w"))
    console.print(render_run(run, run_dir))
    return console.export_text()


def test_summary_matches_golden():
    text = render_text(sample_run(), Path("runs/a"))
    if os.environ.get("LMPROF_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_failed_run_says_so():
    run = sample_run()
    run.status = "failed"
    run.error = {"type": "ModelLoadError", "message": "corrupt safetensors"}
    text = render_text(run)
    assert "[FAILED] ModelLoadError: corrupt safetensors" in text
