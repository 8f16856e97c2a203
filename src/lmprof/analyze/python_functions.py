"""Figures from a function-level Python profile (`DeepProfile.python`): sorted rows, slowdown.

Pure: takes the record's dict, returns rows; no I/O.
"""

from __future__ import annotations

from typing import Any

from lmprof.errors import UsageError

SORT_KEYS = {"self": "self_s", "total": "total_s", "calls": "calls"}


def function_rows(
    python: dict[str, Any], sort_by: str = "self", limit: int | None = 30
) -> list[dict[str, Any]]:
    """The profile's functions, heaviest first by `sort_by` ("self", "total" or "calls").

    Each row gains `self_share` and `total_share`: its time over the profile's total.
    """
    if sort_by not in SORT_KEYS:
        raise UsageError(f"cannot sort Python functions by '{sort_by}': use one of {', '.join(SORT_KEYS)}")
    functions = python.get("functions") or []
    key = SORT_KEYS[sort_by]
    if sort_by == "calls" and any(f.get("calls") is None for f in functions):
        raise UsageError(
            f"{python.get('sampler', 'this profiler')} samples stacks and cannot count calls: sort by self or total"
        )
    total_s = python.get("total_s") or 0.0
    rows = []
    for f in functions:
        row = dict(f)
        row["self_share"] = f["self_s"] / total_s if total_s > 0 else None
        row["total_share"] = f["total_s"] / total_s if total_s > 0 else None
        rows.append(row)
    # Ties fall back to self time, then name, so equal rows print in the same order every time.
    rows.sort(key=lambda r: (-r[key], -r["self_s"], r["name"], r.get("file") or "", r.get("line") or 0))
    return rows if limit is None else rows[:limit]
