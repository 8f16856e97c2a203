"""Per-CPU choices of the native kernels that no instruction-set flag decides, each measured.

Software prefetch (kernels.h, `prefetch_bytes`): how far ahead each weight stream of a tile
asks for its lines, into L1, as two distances: for narrow tiles (fewer than 4 activation rows:
batch 1-3, where the step waits on memory) and for wide ones (4 or more: batch 4 and up,
where it waits on its arithmetic). 0 keeps kernels.h's default (none at batch 1; the rows two
ahead, into L2, at batch > 1). A prefetch paid on one CPU and cost on another, so the choice is
a table keyed by vendor, family and model, filled from `benchmarks/prefetch_distance.py`
(interleaved decode steps at each distance, in one process; benchmarks/RESULTS.md):

- AMD family 26 (Zen 5), 2-core VM, 2026-12-02: 4096 bytes for both. Batch 1: fp32 step
  1.01-1.15x at 2 threads, 1.02-1.09x at 1 thread; int8 1.06-1.12x; W8A8 1.21x. Batch 8
  products: fp32 1.04-1.10x, int8 1.02x, W8A8 1.5x. The gain follows the host's bandwidth of
  the moment (1.01-1.02x in a slow phase, up to 1.23x in fast rounds); 8192 bytes cost 6% at
  1 thread.
- AMD family 25 models 0x00-0x0f, 0x20-0x5f (Zen 3), 2-core VM, 2026-12-03: narrow tiles the
  default, wide ones 2048 bytes. At batch 1 every distance cost: fp32 0.91x (2048 bytes),
  0.94x (4096, 8192) at 2 threads, 0.96x (1024) and 0.91x (4096) at 1 thread; int8 1.02-1.03x,
  within the rounds' spread; batch 2 0.98x at 2048. At batch 8 2048 bytes made the step 1.13x
  faster at 1 thread (1024: 1.07x, 4096: 1.11x) and 1.05x at 2 threads; at batch 4 1.11x and
  1.07x; batch 8 at 1 thread, int8 1.07x and W8A8 1.14x.
- Intel family 6 model 207 (0xCF, Emerald Rapids Xeon), 2-core VM, 2026-12-05: 2048 bytes for
  both; no distance lost anywhere it was measured. Batch 1 fp32: 1.077x at 2 threads (30
  rounds; 4096: 1.068x), 1.041x at 1 thread (20 rounds; 4096: 1.035x; 1.008x over an earlier 8);
  int8 1.076x at 2 threads and 1.62x at 1 (its 135 MB partly stay in the 300 MiB L3 from one
  step to the next, so the prefetch finds more lines near); W8A8 level at 2 threads (1.008x),
  1.19x at 1. Batch 8: fp32 1.043x at 1 thread and 1.038x at 2, W8A8 1.21x at 2.
- Other AMD family 25 (Zen 4): the default. Prefetching the rows two ahead at batch 1 (4.6 KB
  for the 576-wide rows) made the one-thread step 1.08x slower and the two-thread one 1.02x
  faster (2026-12-01); wide tiles are unmeasured.
- Everything else: the default, until measured.

$LMPROF_PREFETCH_BYTES overrides the table, for measuring a new CPU: one number for both
distances, or two, narrow then wide ("0,2048"); 0 restores the default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from lmprof.errors import UsageError

ENV_PREFETCH = "LMPROF_PREFETCH_BYTES"


class CpuId(NamedTuple):
    vendor: str  # /proc/cpuinfo's vendor_id
    family: int
    model: int


class Prefetch(NamedTuple):
    """Bytes ahead for narrow tiles (batch 1-3) and wide ones (batch >= 4); 0: the default."""

    narrow: int
    wide: int


def _zen3(model: int) -> bool:
    return model <= 0x0F or 0x20 <= model <= 0x5F


# (vendor, family, which models) -> distances; see the module docstring for what each rests on.
PREFETCH_TABLE: list[tuple[str, int, Callable[[int], bool], Prefetch]] = [
    ("AuthenticAMD", 26, lambda model: True, Prefetch(4096, 4096)),  # Zen 5
    ("AuthenticAMD", 25, _zen3, Prefetch(0, 2048)),  # Zen 3
    ("GenuineIntel", 6, lambda model: model == 0xCF, Prefetch(2048, 2048)),  # Emerald Rapids
]


def cpu_id(cpuinfo: str) -> CpuId | None:
    """Vendor, family and model of the first processor in /proc/cpuinfo's text, or None."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        return CpuId(fields["vendor_id"], int(fields["cpu family"]), int(fields["model"]))
    except (KeyError, ValueError):
        return None


def _from_environment(value: str) -> Prefetch:
    parts = [part.strip() for part in value.split(",")]
    if not 1 <= len(parts) <= 2 or not all(part.isdigit() for part in parts):
        raise UsageError(
            f"${ENV_PREFETCH} must be a whole number of bytes, or two (narrow,wide: '0,2048'); "
            f"0 is the default; got {value!r}"
        )
    return Prefetch(int(parts[0]), int(parts[-1]))


def prefetch_bytes(cpuinfo: str | None = None) -> Prefetch:
    """The prefetch distances for this CPU: the environment's override, else the table."""
    override = os.environ.get(ENV_PREFETCH)
    if override is not None:
        return _from_environment(override)
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return Prefetch(0, 0)
    cpu = cpu_id(cpuinfo)
    for vendor, family, models, distances in PREFETCH_TABLE:
        if cpu is not None and (cpu.vendor, cpu.family) == (vendor, family) and models(cpu.model):
            return distances
    return Prefetch(0, 0)
