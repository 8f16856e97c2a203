"""Phase figures: per-phase peaks from the memory samples, shares, self time, coverage.

Coverage is the point of the phase table: the top-level phases plus an explicit
"unattributed" row add up to the run's wall time, so nothing is hidden.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from lmprof.record.run import Phase, Run

UNATTRIBUTED = "(unattributed)"


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


def phase_rows(run: Run) -> list[PhaseRow]:
    """Rows in tree order (each phase followed by its children), then the unattributed row.

    Consecutive siblings with the same name (tokenize called 3 times) are merged into one
    row with a count, so a script that loops does not flood the table.
    """
    children: dict[int | None, list[int]] = {}
    for i, p in enumerate(run.phases):
        children.setdefault(p.parent_index, []).append(i)
    total = run.wall_s or 1e-12
    rows: list[PhaseRow] = []

    def child_wall(i: int) -> float:
        return sum(run.phases[c].wall_s for c in children.get(i, []))

    def visit(parent: int | None) -> None:
        groups: list[list[int]] = []
        for i in children.get(parent, []):
            if groups and run.phases[groups[-1][-1]].name == run.phases[i].name:
                groups[-1].append(i)
            else:
                groups.append([i])
        for group in groups:
            ps = [run.phases[i] for i in group]
            wall = sum(p.wall_s for p in ps)
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
                    self_s=wall - sum(child_wall(i) for i in group),
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
            if len(group) == 1:
                visit(group[0])
            else:
                _visit_merged(group)

    def _visit_merged(group: list[int]) -> None:
        # Children of repeated phases are summed by name, one level deep.
        merged: dict[str, list[Phase]] = {}
        for i in group:
            for c in children.get(i, []):
                merged.setdefault(run.phases[c].name, []).append(run.phases[c])
        for name, ps in merged.items():
            wall = sum(p.wall_s for p in ps)
            rows.append(
                PhaseRow(
                    name=name, depth=ps[0].depth, wall_s=wall, share=wall / total, self_s=wall,
                    cpu_s=sum(p.cpu_s for p in ps), rss_end_bytes=ps[-1].rss_end_bytes,
                    rss_peak_bytes=max(p.rss_peak_bytes for p in ps),
                    file_rss_delta_bytes=sum(p.file_rss_end_bytes - p.file_rss_start_bytes for p in ps),
                    payload_bytes=None, payload_gbps=None,
                    device_peak_allocated_bytes=_max_or_none(p.device_peak_allocated_bytes for p in ps),
                    complete=all(p.complete for p in ps), count=len(ps),
                )
            )  # fmt: skip

    visit(None)
    covered = sum(p.wall_s for p in run.phases if p.parent_index is None)
    rest = run.wall_s - covered
    rows.append(
        PhaseRow(
            name=UNATTRIBUTED, depth=0, wall_s=rest, share=rest / total, self_s=rest, cpu_s=0.0,
            rss_end_bytes=None, rss_peak_bytes=None, file_rss_delta_bytes=None, payload_bytes=None,
            payload_gbps=None, device_peak_allocated_bytes=None, complete=True,
        )
    )  # fmt: skip
    return rows


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
