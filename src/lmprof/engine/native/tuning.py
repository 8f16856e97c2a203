"""Per-CPU choices of the native kernels that no instruction-set flag decides, each measured.

Software prefetch (kernels.h, `prefetch_bytes`): how far ahead each weight stream of every
tile asks for its lines, into L1. 0 keeps kernels.h's default (none at batch 1; the rows
two ahead, into L2, at batch > 1). It paid on one CPU and cost on another, so the choice is
a table keyed by vendor and family, filled from `benchmarks/prefetch_distance.py`
(interleaved decode steps at each distance, in one process; benchmarks/RESULTS.md):

- AMD family 26 (Zen 5), 2-core VM, 2026-12-02: 4096 bytes. Batch 1: fp32 step 1.01-1.15x at
  2 threads, 1.02-1.09x at 1 thread; int8 1.06-1.12x; W8A8 1.21x. Batch 8 products: fp32
  1.04-1.10x, int8 1.02x, W8A8 1.5x. The gain follows the host's bandwidth of the moment
  (1.01-1.02x in a slow phase, up to 1.23x in fast rounds); 8192 bytes cost 6% at 1 thread.
- AMD family 25 (Zen 3, Zen 4): the default. On a Zen 3 (model 1, 2-core VM, 2026-12-03) every
  distance cost: fp32 step 0.91x (2048 bytes), 0.94x (4096, 8192) at 2 threads, 0.96x (1024)
  and 0.91x (4096) at 1 thread; int8 1.02-1.03x, within the rounds' spread. On a Zen 4
  prefetching the rows two ahead at batch 1 (4.6 KB for the 576-wide rows) made the one-thread
  step 1.08x slower and the two-thread one 1.02x faster (session 2).
- Everything else: the default, until measured.

$LMPROF_PREFETCH_BYTES overrides the table (0 restores the default), for measuring a new CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmprof.errors import UsageError

ENV_PREFETCH = "LMPROF_PREFETCH_BYTES"
# (vendor_id, cpu family) -> bytes ahead; see the module docstring for what each rests on.
PREFETCH_BYTES = {("AuthenticAMD", 26): 4096}


def cpu_vendor_family(cpuinfo: str) -> tuple[str, int] | None:
    """(vendor_id, cpu family) of the first processor in /proc/cpuinfo's text, or None."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        return fields["vendor_id"], int(fields["cpu family"])
    except (KeyError, ValueError):
        return None


def prefetch_bytes(cpuinfo: str | None = None) -> int:
    """The prefetch distance for this CPU: the environment's override, else the table."""
    override = os.environ.get(ENV_PREFETCH)
    if override is not None:
        if not override.strip().isdigit():
            raise UsageError(
                f"${ENV_PREFETCH} must be a whole number of bytes (0: the default), got {override!r}"
            )
        return int(override)
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return 0
    return PREFETCH_BYTES.get(cpu_vendor_family(cpuinfo) or ("", -1), 0)
