"""Run-time conditions that distort timings: thread settings and competing CPU load.

Take `snapshot_load()` before and after the measured work, then `describe_environment`
turns the two snapshots into figures for the Run. The arithmetic is pure and separate
from reading /proc, so it is tested with hand-built snapshots.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

# Other processes using more than a quarter of all CPU time means a multi-threaded
# torch run lost (or waited for) at least that share of its cores.
OTHER_SHARE_WARN = 0.25
# A 1-minute load average within half a thread of the core count at the start means
# the machine was already (nearly) saturated. The start snapshot is taken before model
# loading, so the damped average is still mostly other processes' work, not ours.
LOAD_HEADROOM_CORES = 0.5

THREAD_ENV_NAMES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OMP_PROC_BIND",
    "OMP_PLACES",
    "KMP_AFFINITY",
    "GOMP_CPU_AFFINITY",
    "OPENBLAS_CORETYPE",
    "CUDA_VISIBLE_DEVICES",
    "PYTORCH_CUDA_ALLOC_CONF",
)
# Any other OpenMP setting (OMP_WAIT_POLICY, OMP_DYNAMIC, Intel's KMP_BLOCKTIME) also
# changes how threads spin or sleep between kernels.
THREAD_ENV_PREFIXES = ("OMP_", "KMP_")


@dataclass(frozen=True)
class LoadSnapshot:
    wall_s: float
    busy_cpu_s: float  # system-wide non-idle CPU seconds, summed over all CPUs
    process_cpu_s: float  # this process and its reaped children, user + system
    load_avg: tuple[float, float, float]


def _busy_seconds(times) -> float:
    """Non-idle CPU seconds, the way psutil.cpu_percent counts them.

    iowait is idle time. Linux already counts guest time inside user/nice, so it is
    taken out to avoid counting it twice. Steal stays in: the hypervisor gave our vCPUs
    to another guest, which slows the run exactly like a local competitor.
    """
    total = sum(times)
    for idle_field in ("idle", "iowait", "guest", "guest_nice"):
        total -= getattr(times, idle_field, 0.0)
    return total


def snapshot_load(clock: Callable[[], float] = time.perf_counter) -> LoadSnapshot:
    own = psutil.Process().cpu_times()
    process_cpu_s = own.user + own.system + own.children_user + own.children_system
    return LoadSnapshot(
        wall_s=clock(),
        busy_cpu_s=_busy_seconds(psutil.cpu_times()),
        process_cpu_s=process_cpu_s,
        load_avg=tuple(psutil.getloadavg()),
    )


def other_processes_cpu_share(start: LoadSnapshot, end: LoadSnapshot, logical_cores: int) -> float:
    """CPU time used by other processes over the window, as a share of all CPUs' time."""
    wall_s = end.wall_s - start.wall_s
    if wall_s <= 0 or logical_cores <= 0:
        return 0.0
    others_s = (end.busy_cpu_s - start.busy_cpu_s) - (end.process_cpu_s - start.process_cpu_s)
    # Clamped: tick-granular counters (10 ms) can make a short window's difference
    # slightly negative or, summed over CPUs, overshoot.
    return min(1.0, max(0.0, others_s / (wall_s * logical_cores)))


def busy_warning(other_share: float, load_avg_start: tuple[float, ...], logical_cores: int) -> str | None:
    """One sentence when competing load makes timings suspect, else None."""
    cpus = f"{logical_cores} CPU" + ("" if logical_cores == 1 else "s")
    load = load_avg_start[0]
    advice = "timings may be inflated; rerun on an idle machine"
    if other_share > OTHER_SHARE_WARN:
        return (
            f"other processes used {other_share:.0%} of the {cpus} during the run "
            f"(load average {load:.1f} at start): {advice}"
        )
    if load > logical_cores - LOAD_HEADROOM_CORES:
        return f"the machine was busy when the run started (load average {load:.1f} on {cpus}): {advice}"
    return None


def thread_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The set thread/affinity/allocator variables, sorted by name."""
    names = {name for name in environ if name in THREAD_ENV_NAMES or name.startswith(THREAD_ENV_PREFIXES)}
    return {name: environ[name] for name in sorted(names)}


def torch_thread_counts(torch_module: ModuleType | None) -> tuple[int | None, int | None]:
    """(intra-op, inter-op) threads of an imported torch; (None, None) without one."""
    if torch_module is None:
        return None, None
    return torch_module.get_num_threads(), torch_module.get_num_interop_threads()


def describe_environment(
    start: LoadSnapshot,
    end: LoadSnapshot,
    logical_cores: int,
    *,
    environ: Mapping[str, str] | None = None,
    torch_module: ModuleType | None = None,
) -> dict[str, Any]:
    """JSON-ready conditions of the window between two snapshots.

    `environ` defaults to os.environ and `torch_module` to torch if already imported
    (never imported here: the CLI times torch's import).
    """
    if environ is None:
        environ = os.environ
    if torch_module is None:
        torch_module = sys.modules.get("torch")
    threads, interop_threads = torch_thread_counts(torch_module)
    share = other_processes_cpu_share(start, end, logical_cores)
    return {
        "torch_threads": threads,
        "torch_interop_threads": interop_threads,
        "thread_env": thread_env(environ),
        "load_avg_start": list(start.load_avg),
        "load_avg_end": list(end.load_avg),
        "other_processes_cpu_share": share,
        "busy_warning": busy_warning(share, start.load_avg, logical_cores),
    }
