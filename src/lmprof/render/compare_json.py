"""A Comparison (and its threshold checks) as plain JSON data, for scripts and CI."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from lmprof.analyze.compare import Comparison
from lmprof.analyze.thresholds import ThresholdCheck


def comparison_to_dict(comparison: Comparison, checks: Sequence[ThresholdCheck] = ()) -> dict[str, Any]:
    return {
        "baseline": comparison.groups[0].label,
        "groups": [dataclasses.asdict(g) | {"description": g.description} for g in comparison.groups],
        "figures": [
            {
                **dataclasses.asdict(row.spec),
                "values": [
                    None if m is None else dataclasses.asdict(m) | {"spread": m.spread} for m in row.measures
                ],
                "changes": [None if c is None else dataclasses.asdict(c) for c in row.changes],
            }
            for row in comparison.rows
        ],
        "checks": [dataclasses.asdict(c) | {"evaluated": c.evaluated} for c in checks],
        "notes": list(comparison.notes),
    }


def render_comparison_json(comparison: Comparison, checks: Sequence[ThresholdCheck] = ()) -> str:
    return json.dumps(comparison_to_dict(comparison, checks), indent=1, allow_nan=False)
