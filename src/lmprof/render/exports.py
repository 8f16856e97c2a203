"""Write a run's flame graphs and timeline as files other tools open.

Per flame graph: speedscope JSON, folded stacks (flamegraph.pl, inferno) and a standalone
SVG; for the run: trace.json for Perfetto UI or chrome://tracing. Each file is written
atomically, so a viewer never opens half of one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmprof.record.files import write_atomic
from lmprof.record.run import Run
from lmprof.render.flame_svg import to_flame_svg
from lmprof.render.folded import to_folded
from lmprof.render.perfetto import to_chrome_trace
from lmprof.render.speedscope import to_speedscope

TRACE_FILE = "trace.json"


def write_exports(run: Run, run_dir: Path) -> list[Path]:
    """The paths written, flame files first. Without a deep profile there are no flame
    graphs, but the timeline of phases, tokens and memory is still written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    written = []
    stems: set[str] = set()
    for flame in run.deep.flames if run.deep is not None else []:
        stem = _unique(f"flame-{_file_safe(flame.name)}", stems)
        model_id = (run.model or {}).get("id")
        title = f"{model_id}: {flame.name}" if model_id else flame.name
        speedscope = json.dumps(to_speedscope(run, flame), separators=(",", ":"), allow_nan=False)
        written.append(write_atomic(run_dir / f"{stem}.speedscope.json", speedscope + "\n"))
        written.append(write_atomic(run_dir / f"{stem}.folded", to_folded(flame)))
        written.append(write_atomic(run_dir / f"{stem}.svg", to_flame_svg(flame, title)))
    trace = json.dumps(to_chrome_trace(run), separators=(",", ":"), allow_nan=False)
    written.append(write_atomic(run_dir / TRACE_FILE, trace + "\n"))
    return written


def _file_safe(name: str) -> str:
    # Flame names come from the record; keep them from naming a path outside run_dir.
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "flame"


def _unique(stem: str, taken: set[str]) -> str:
    candidate, n = stem, 2
    while candidate in taken:
        candidate, n = f"{stem}-{n}", n + 1
    taken.add(candidate)
    return candidate
