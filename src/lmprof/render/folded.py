"""Brendan Gregg's folded-stack text for a flame graph: `root;child;leaf 1234` per line.

The format every flame graph tool reads (flamegraph.pl, inferno, speedscope, Firefox
profiler). Weights are integers: microseconds for seconds-unit flames, bytes for byte flames.
"""

from __future__ import annotations

import math
import re

from lmprof.record.deep import FlameGraph

FOLDED_LINE = re.compile(r"^[^;\n]+(;[^;\n]+)* \d+$")

# Per unit: the factor that turns a flame weight into the integer the folded file carries.
_INTEGER_SCALE = {"seconds": 1_000_000, "bytes": 1}


def folded_unit(flame: FlameGraph) -> str:
    """What the integers in `to_folded(flame)` count."""
    return "microseconds" if flame.unit == "seconds" else flame.unit


def folded_frame(frame: str) -> str:
    """A frame the grammar accepts: ';' separates frames and a newline ends the line, so
    both are replaced (always the same way, so equal frames stay equal)."""
    clean = frame.replace(";", ",").replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return clean if clean else "(unnamed)"


def to_folded(flame: FlameGraph) -> str:
    """One sorted line per unique stack. Stacks that are empty, or whose weight is not a
    positive finite number, cannot be drawn and are left out."""
    merged: dict[str, float] = {}
    for stack, weight in zip(flame.stacks, flame.weights):
        if not stack or not (math.isfinite(weight) and weight > 0):
            continue
        key = ";".join(folded_frame(f) for f in stack)
        merged[key] = merged.get(key, 0.0) + weight
    scale = _INTEGER_SCALE.get(flame.unit, 1)
    lines = []
    # Round the running sum rather than each line, so the integers add up to the rounded
    # total instead of drifting by up to half a unit per line.
    running, emitted = 0.0, 0
    for key in sorted(merged):
        running += merged[key] * scale
        count = round(running) - emitted
        emitted += count
        lines.append(f"{key} {count}")
    return "".join(line + "\n" for line in lines)


def parse_folded(text: str) -> list[tuple[list[str], int]]:
    """Read folded-stack text back: (frames root-first, weight) per line. Raises ValueError
    on a line that does not follow the grammar."""
    rows = []
    # split("\n"), not splitlines(): only a newline ends a line in this format.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        if not FOLDED_LINE.match(line):
            raise ValueError(f"line {number} is not folded-stack text: {line!r}")
        frames, weight = line.rsplit(" ", 1)
        rows.append((frames.split(";"), int(weight)))
    return rows
