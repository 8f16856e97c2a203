"""A flame graph as a speedscope file (https://www.speedscope.app/file-format-schema.json).

One "sampled" profile: each stack of the flame is one sample, its weight the sample's
weight, so speedscope's left-heavy and sandwich views add them up as the flame does.
"""

from __future__ import annotations

import math
import re
from typing import Any

from lmprof.record.deep import FlameGraph
from lmprof.record.run import Run

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"

# speedscope's ValueUnit names for the flame units the Run uses.
_UNITS = {"seconds": "seconds", "bytes": "bytes"}

# "py:generate (utils.py:2584)": speedscope shows file and line beside the name.
_PY_FRAME = re.compile(r"^py:.* \((?P<file>[^()]+):(?P<line>\d+)\)$")


def to_speedscope(run: Run, flame: FlameGraph) -> dict[str, Any]:
    """Weights stay in the flame's own unit (seconds or bytes), unrounded. Stacks that are
    empty or whose weight is not a positive finite number are left out, as in the folded text."""
    frame_index: dict[str, int] = {}
    frames: list[dict[str, Any]] = []
    samples: list[list[int]] = []
    weights: list[float] = []
    for stack, weight in zip(flame.stacks, flame.weights):
        if not stack or not (math.isfinite(weight) and weight > 0):
            continue
        sample = []
        for name in stack:
            if name not in frame_index:
                frame_index[name] = len(frames)
                frames.append(_frame(name))
            sample.append(frame_index[name])
        samples.append(sample)
        weights.append(weight)
    model_id = (run.model or {}).get("id")
    title = f"{model_id} {flame.name}" if model_id else flame.name
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "name": f"lmprof {title} ({run.run_id})",
        "exporter": f"lmprof {run.lmprof_version}",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": f"{title}: {flame.source}" if flame.source else title,
                "unit": _UNITS.get(flame.unit, "none"),
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
    }


def _frame(name: str) -> dict[str, Any]:
    frame: dict[str, Any] = {"name": name}
    match = _PY_FRAME.match(name)
    if match:
        frame["file"] = match["file"]
        frame["line"] = int(match["line"])
    return frame
