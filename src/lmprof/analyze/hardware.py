"""What the hardware probes say about a decode step's ceiling: the best read bandwidth.

A batch-1 decode step streams every weight once, so the fastest any engine could run it
is weight bytes over the fastest stream of reads this machine was measured to sustain.
"""

from __future__ import annotations

from collections.abc import Iterable

from lmprof.record.probes import ProbeResult

# Probes whose bytes are all reads of one large buffer: a plain reduction and a
# matrix-vector product (which is a decode step's inner loop).
READ_PROBE_KINDS = ("read", "matvec")


def best_read_gbps(probes: Iterable[ProbeResult], device: str = "cpu") -> float | None:
    """The highest best-of-repeats read bandwidth any read-only probe reached on `device`, GB/s.

    The best repeat, not the median: the floor is what the memory system can do, and a
    slower repeat on a shared machine measures the other tenants as much as the hardware.
    """
    rates = [
        p.best_gbps
        for p in probes
        if p.kind in READ_PROBE_KINDS and p.device == device and p.skipped is None and p.best_gbps
    ]
    return max(rates) if rates else None
