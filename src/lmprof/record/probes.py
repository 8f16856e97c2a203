"""The hardware probes as saved and re-read: each probe's repeat times, the conditions of the
measurement, and the sizes it ran at.

Torch-free: `lmprof sysinfo` renders a cached measurement, and the ablation table reads its
floor, without loading torch. The measuring is `lmprof.collect.hardware_probes`.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 2**20

# A buffer twice the last-level cache leaves little of itself cached between repeats, while
# one just over it can keep a share resident under the adaptive replacement of recent CPUs.
CACHE_MULTIPLE = 2


@dataclass(frozen=True)
class ProbeSizes:
    """How big and how long each probe is; tests pass tiny ones."""

    # Defaults well above a common last-level cache (32 MiB on the machine this was written
    # on), so the probes stream from DRAM rather than re-reading cached lines;
    # `lmprof.collect.hardware_probes.sizes_for_device` grows them on CPUs whose cache is larger
    # (a 480 MiB L3 held the 128 MiB matvec probe and read it at 1.7x the DRAM rate).
    read_bytes: int = 256 * MIB
    matvec_weight_bytes: int = 128 * MIB
    matvec_in_features: int = 2048
    matmul_n: int = 1024
    h2d_bytes: int = 256 * MIB
    warmup: int = 1
    repeats: int = 7
    max_probe_s: float = 1.5  # repeats stop after this much time (once MIN_REPEATS ran)
    max_matmul_op_s: float = 0.25  # a slower square matmul (fp16 without native kernels) is halved

    @classmethod
    def for_cuda(cls) -> ProbeSizes:
        # A GPU streams 256 MiB in well under a millisecond: give it more to read and multiply.
        return cls(read_bytes=1024 * MIB, matvec_weight_bytes=512 * MIB, matmul_n=4096)

    @classmethod
    def for_cpu_cache(cls, cache_bytes: int | None) -> ProbeSizes:
        """CPU sizes that stream from DRAM past a last-level cache of `cache_bytes`: each
        buffer at least CACHE_MULTIPLE times the cache, never below the defaults."""
        if not cache_bytes:
            return cls()
        least = -(-CACHE_MULTIPLE * cache_bytes // (64 * MIB)) * 64 * MIB  # rounded up to 64 MiB steps
        return cls(
            read_bytes=max(cls.read_bytes, least), matvec_weight_bytes=max(cls.matvec_weight_bytes, least)
        )


@dataclass
class ProbeResult:
    """One probe: what it moved or computed per repeat, and how long each repeat took."""

    name: str  # "read", "copy", "matvec", "matvec_column_major", "matmul", "h2d_pinned", ...
    kind: str  # read | copy | matvec | matmul | host_to_device
    device: str
    dtype: str | None
    shape: list[int]
    bytes_per_repeat: int  # bytes read (a copy: read plus written)
    flops_per_repeat: int  # a multiply-add counts 2
    times_s: list[float] = field(default_factory=list)
    timing: str = "host_clock"  # or "cuda_events"
    skipped: str | None = None  # why the probe did not run here

    @property
    def best_s(self) -> float | None:
        return min(self.times_s) if self.times_s else None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    def _rate(self, amount: int, seconds: float | None) -> float | None:
        return amount / seconds / 1e9 if amount and seconds else None

    @property
    def best_gbps(self) -> float | None:
        return self._rate(self.bytes_per_repeat, self.best_s)

    @property
    def median_gbps(self) -> float | None:
        return self._rate(self.bytes_per_repeat, self.median_s)

    @property
    def best_gflops(self) -> float | None:
        return self._rate(self.flops_per_repeat, self.best_s)

    @property
    def median_gflops(self) -> float | None:
        return self._rate(self.flops_per_repeat, self.median_s)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("best_s", "median_s", "best_gbps", "median_gbps", "best_gflops", "median_gflops"):
            data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class HardwareProbes:
    """Every probe of one measurement, with the conditions it ran under."""

    measured_at: str
    threads: int
    torch_version: str
    sizes: dict[str, dict[str, Any]]  # device -> ProbeSizes as a dict
    load_avg_start: list[float]
    load_avg_end: list[float]
    wall_s: float
    probes: list[ProbeResult]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["probes"] = [p.to_dict() for p in self.probes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareProbes:
        fields = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["probes"] = [ProbeResult.from_dict(p) for p in data.get("probes", [])]
        return cls(**kwargs)
