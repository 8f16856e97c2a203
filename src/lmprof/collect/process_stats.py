"""Cheap point-in-time readings of this process: memory, I/O and page faults.

Read at every phase boundary, so each read must cost microseconds, not milliseconds.
On Linux `memory_info().shared` is RssFile + RssShmem: the file-backed resident pages,
which is where memory-mapped safetensors weights show up once their pages are touched.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import psutil

_PROCESS = psutil.Process()


@dataclass(frozen=True)
class ProcessSnapshot:
    rss_bytes: int
    file_rss_bytes: int
    disk_read_bytes: int | None
    major_faults: int
    minor_faults: int


def read_memory() -> tuple[int, int]:
    """(rss_bytes, file_rss_bytes) of this process."""
    info = _PROCESS.memory_info()
    return info.rss, getattr(info, "shared", 0)


def read_process() -> ProcessSnapshot:
    rss, file_rss = read_memory()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        disk_read: int | None = _PROCESS.io_counters().read_bytes
    except (psutil.AccessDenied, AttributeError, NotImplementedError):
        disk_read = None  # not every kernel or container exposes /proc/self/io
    return ProcessSnapshot(rss, file_rss, disk_read, usage.ru_majflt, usage.ru_minflt)


def os_peak_rss_bytes() -> int | None:
    """The kernel's own high-water mark of resident memory (VmHWM) for this process."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if psutil.MACOS else peak * 1024
