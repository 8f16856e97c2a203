"""Phase figures: per-phase peaks from the memory samples, shares, self time, coverage.

Coverage is the point of the phase table: the top-level phases plus an explicit
"unattributed" row add up to the run's wall time, and every parent whose own time (wall
less its children's) is over 2% of the run gets a "(rest of NAME)" row, so nothing is hidden.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmprof.record.run import Phase, Run

UNATTRIBUTED = "(unattributed)"
GAP_SHARE = 0.02  # a parent's own time over this share of the run gets a "(rest of ...)" row
REPEAT_FLAG_S = 1.0  # repeated loading work over this many seconds is flagged


def refine_phase_peaks(phases: Sequence[Phase], t_s: Sequence[float], rss_bytes: Sequence[int]) -> None:
    """Set each phase's rss_peak_bytes to the highest sample inside it (and its endpoints)."""
    for phase in phases:
        lo = bisect.bisect_left(t_s, phase.start_s)
        hi = bisect.bisect_right(t_s, phase.end_s)
        inside = rss_bytes[lo:hi]
        phase.rss_peak_bytes = max([phase.rss_start_bytes, phase.rss_end_bytes, *inside])


@dataclass(frozen=True)
class PhaseRow:
    name: str
    depth: int
    wall_s: float
    share: float  # of the run's wall time
    self_s: float  # wall time not inside any child phase
    cpu_s: float
    rss_end_bytes: int | None
    rss_peak_bytes: int | None
    file_rss_delta_bytes: int | None
    payload_bytes: int | None
    payload_gbps: float | None
    device_peak_allocated_bytes: int | None
    complete: bool
    count: int = 1
    functions: tuple[str, ...] = ()  # a gap row: the Python functions sampled most in it


def rest_name(parent: str) -> str:
    return f"(rest of {parent})"


def is_filler(name: str) -> bool:
    """The rows no phase recorded: (unattributed) and (rest of X)."""
    return name == UNATTRIBUTED or name.startswith("(rest of ")


def phase_rows(run: Run, gap_share: float = GAP_SHARE) -> list[PhaseRow]:
    """Rows in tree order (each phase followed by its children), then the unattributed row.

    Siblings with the same name (tokenize called 3 times, a config read twice inside one
    parent) are merged into one row with a count and their total, at the first one's place;
    their children are merged the same way. Where a row's own time (its wall less its
    children's) is over `gap_share` of the run, a `(rest of NAME)` row says so, so the time
    that no phase names is never hidden.
    """
    children: dict[int | None, list[int]] = {}
    for i, p in enumerate(run.phases):
        children.setdefault(p.parent_index, []).append(i)
    total = run.wall_s or 1e-12
    functions = {g.get("parent"): tuple(g.get("functions", ())) for g in run.phase_gaps}
    rows: list[PhaseRow] = []

    def visit(parents: list[int | None]) -> None:
        groups: dict[str, list[int]] = {}
        for parent in parents:
            for i in children.get(parent, []):
                groups.setdefault(run.phases[i].name, []).append(i)
        for group in groups.values():
            ps = [run.phases[i] for i in group]
            wall = sum(p.wall_s for p in ps)
            kids = [c for i in group for c in children.get(i, [])]
            self_s = wall - sum(run.phases[c].wall_s for c in kids)
            payload = (
                sum(p.payload_bytes for p in ps if p.payload_bytes is not None)
                if any(p.payload_bytes is not None for p in ps)
                else None
            )
            rows.append(
                PhaseRow(
                    name=ps[0].name,
                    depth=ps[0].depth,
                    wall_s=wall,
                    share=wall / total,
                    self_s=self_s,
                    cpu_s=sum(p.cpu_s for p in ps),
                    rss_end_bytes=ps[-1].rss_end_bytes,
                    rss_peak_bytes=max(p.rss_peak_bytes for p in ps),
                    file_rss_delta_bytes=sum(p.file_rss_end_bytes - p.file_rss_start_bytes for p in ps),
                    payload_bytes=payload,
                    payload_gbps=payload / wall / 1e9 if payload and wall > 0 else None,
                    device_peak_allocated_bytes=_max_or_none(p.device_peak_allocated_bytes for p in ps),
                    complete=all(p.complete for p in ps),
                    count=len(ps),
                )
            )
            if kids:
                visit(list(group))
                if self_s > gap_share * total:
                    rows.append(_filler(rest_name(ps[0].name), ps[0].depth + 1, self_s, total,
                                        functions.get(ps[0].name, ())))  # fmt: skip

    visit([None])
    rows.append(_filler(UNATTRIBUTED, 0, unattributed_s(run), total, functions.get(None, ())))
    return rows


def _filler(name: str, depth: int, wall_s: float, total: float, functions: tuple[str, ...] = ()) -> PhaseRow:
    return PhaseRow(
        name=name, depth=depth, wall_s=wall_s, share=wall_s / total, self_s=wall_s, cpu_s=0.0,
        rss_end_bytes=None, rss_peak_bytes=None, file_rss_delta_bytes=None, payload_bytes=None,
        payload_gbps=None, device_peak_allocated_bytes=None, complete=True, functions=functions,
    )  # fmt: skip


def phase_gaps(run: Run, gap_share: float = GAP_SHARE) -> list[dict]:
    """The time inside phases that no child names, where it is over `gap_share` of the run:
    one entry per parent name (repeats summed), largest first. Saved in the Run as
    `phase_gaps`, so a report names the gap without the rows."""
    total = run.wall_s or 1e-12
    gaps = [
        {"parent": r.name.removeprefix("(rest of ").removesuffix(")"), "self_s": r.wall_s, "share": r.share}
        for r in phase_rows(run, gap_share)
        if r.name.startswith("(rest of ")
    ]
    rest = unattributed_s(run)
    if rest > gap_share * total:
        gaps.append({"parent": None, "self_s": rest, "share": rest / total})
    return sorted(gaps, key=lambda g: -g["self_s"])


# Loading work that a run should do once: (phase, how the summary words a repeat).
REPEATABLE_WORK = {
    "parse_gguf": "GGUF metadata parsed",
    "read_gguf_header": "GGUF header read",
    "map_gguf_names": "GGUF tensor names mapped",
    "load_config": "config read",
    "convert_tokenizer": "tokenizer converted",
    "load_tokenizer": "tokenizer loaded",
    "load_model": "model loaded",
    "read_weights": "weights read",
    "download": "file downloaded",
}
# Work done once per file (named in the phase's `file` detail), where another file is no
# repeat. Not parse_gguf: transformers' GGUF readers that lmprof wraps do not all name it.
REPEATS_PER_FILE = frozenset({"download"})


def repeated_work(run: Run, min_s: float = REPEAT_FLAG_S) -> list[tuple[str, int, float]]:
    """(what, times, total seconds) for loading work done more than once, costing over
    `min_s` in all; outermost calls only (a phase inside one of the same name is not a repeat).
    Per-file work (REPEATS_PER_FILE) repeats only on the same file: a model's six files
    downloaded once each are no repeat."""
    found: dict[tuple[str, Any], list[float]] = {}
    for p in run.phases:
        if p.name not in REPEATABLE_WORK or _inside_same(run, p):
            continue
        file = p.detail.get("file") if p.name in REPEATS_PER_FILE else None
        found.setdefault((p.name, file), []).append(p.wall_s)
    out = [
        (REPEATABLE_WORK[name], len(ws), sum(ws))
        for (name, _), ws in found.items()
        if len(ws) > 1 and sum(ws) > min_s
    ]
    return sorted(out, key=lambda t: -t[2])


def _inside_same(run: Run, phase: Phase) -> bool:
    i = phase.parent_index
    while i is not None:
        if run.phases[i].name == phase.name:
            return True
        i = run.phases[i].parent_index
    return False


def unattributed_s(run: Run) -> float:
    return run.wall_s - sum(p.wall_s for p in run.phases if p.parent_index is None)


def weight_paging(run: Run) -> list[tuple[str, int]]:
    """Where file-backed pages (memory-mapped weights) became resident: (phase, bytes) by
    each phase's own share (its delta less its children's), largest first. This is where
    the weight bytes were really read, whatever phase was named for reading them."""
    own: dict[int, int] = {}
    for i, p in enumerate(run.phases):
        own[i] = own.get(i, 0) + p.file_rss_end_bytes - p.file_rss_start_bytes
        if p.parent_index is not None:
            own[p.parent_index] = own.get(p.parent_index, 0) - (p.file_rss_end_bytes - p.file_rss_start_bytes)
    totals: dict[str, int] = {}
    for i, delta in own.items():
        name = run.phases[i].name
        # Start-up and imports map shared libraries, not weights.
        if name != "python_startup" and not name.startswith("import_") and delta > 0:
            totals[name] = totals.get(name, 0) + delta
    return sorted(totals.items(), key=lambda kv: -kv[1])


def _max_or_none(values) -> int | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None
