"""Samples host RSS (and device memory) on the session clock, from outside the interpreter lock.

A sampler thread in the profiled process has to take the GIL for every sample, and a decode
loop that is mostly Python (small models, or any model's sampling and bookkeeping) then pays
for each wake-up: the thread waits for the lock, the main thread gives it up and waits to get
it back. On Linux, without a device to read, the samples are therefore taken by a small child
Python process that reads /proc/<pid>/statm (the same numbers psutil reads) on the shared
monotonic clock and writes them to a file read back at stop: the profiled interpreter never
stops for it. Elsewhere, and on CUDA (torch's allocator counters can only be read in the
process), a thread samples as before. Phase boundaries always take one sample in the process,
so no phase's peak falls between samples. Samples are kept as parallel columns (time, values)
because a 10 ms interval over a minute is 6000 rows, and columns serialize compactly.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmprof.collect.device import CpuDevice, CudaDevice
from lmprof.collect.process_stats import read_memory

DEFAULT_INTERVAL_S = 0.010
CHILD_STOP_TIMEOUT_S = 5.0

# The child's whole program: no imports beyond the standard library's C-backed modules, so it
# starts in ~20 ms. It stops when its stdin closes (the session stopped, or the parent died); a
# line on its stdin is a new interval in seconds (set_interval).
_CHILD_PROGRAM = r"""
import os, select, struct, sys, time
pid, interval, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
page = os.sysconf("SC_PAGE_SIZE")
fd = os.open("/proc/%d/statm" % pid, os.O_RDONLY)
pack, clock, stdin = struct.Struct("<dqq").pack, time.perf_counter, sys.stdin.fileno()
with open(path, "wb", buffering=1 << 16) as out:
    while True:
        try:
            fields = os.pread(fd, 128, 0).split()
        except OSError:
            break
        out.write(pack(clock(), int(fields[1]) * page, int(fields[2]) * page))
        if select.select([stdin], [], [], interval)[0]:
            said = os.read(stdin, 256)
            if not said:
                break
            interval = float(said.split()[-1])
"""
_RECORD = struct.Struct("<dqq")  # perf_counter seconds, resident bytes, file-backed resident bytes


def _reap(child: subprocess.Popen) -> float | None:
    """Wait for the child (killing it after CHILD_STOP_TIMEOUT_S); its CPU seconds, where known."""
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            pid, _, usage = os.wait4(child.pid, os.WNOHANG)
        except ChildProcessError:
            child.wait()
            return None
        if pid:
            child.returncode = 0
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.002)
    child.kill()
    child.wait()
    return None


@dataclass
class MemorySamples:
    t_s: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)
    file_rss_bytes: list[int] = field(default_factory=list)
    device_t_s: list[float] = field(default_factory=list)
    device_allocated_bytes: list[int] = field(default_factory=list)
    device_reserved_bytes: list[int] = field(default_factory=list)
    device_nvml_used_bytes: list[int | None] = field(default_factory=list)


def process_sampling_available() -> bool:
    return sys.platform.startswith("linux") and os.path.exists(f"/proc/{os.getpid()}/statm")


class MemorySampler:
    """Start, stop, and read back `samples`. Never prints.

    `mode`: "process" (a child process reads /proc; Linux, host only), "thread", or "auto"
    (process where it can, thread otherwise). `mode_used` says which one ran."""

    def __init__(
        self,
        now_s: Callable[[], float],
        interval_s: float = DEFAULT_INTERVAL_S,
        device: CpuDevice | CudaDevice | None = None,
        read_host: Callable[[], tuple[int, int]] = read_memory,
        mode: str = "auto",
    ) -> None:
        if interval_s <= 0:
            raise ValueError("sampling interval must be positive")
        if mode not in ("auto", "process", "thread"):
            raise ValueError(f"unknown sampler mode {mode!r}")
        self.interval_s = interval_s
        self.samples = MemorySamples()
        self._now_s = now_s
        self._device = device if device is not None else CpuDevice()
        self._read_host = read_host
        self._mode = mode
        self.mode_used: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen | None = None
        self._child_file: Path | None = None
        self._clock_offset_s = 0.0  # perf_counter() - now_s(): the child stamps perf_counter
        self.child_cpu_s: float | None = None  # CPU seconds the child used, read when it exits

    def sample_once(self) -> None:
        """Take one sample now (also called at phase boundaries so no peak falls between)."""
        # One lock keeps the columns aligned and the times ordered when a phase
        # boundary samples while the thread does.
        with self._lock:
            t = self._now_s()
            rss, file_rss = self._read_host()
            s = self.samples
            s.t_s.append(t)
            s.rss_bytes.append(rss)
            s.file_rss_bytes.append(file_rss)
            reading = self._device.read()
            if reading is not None:
                s.device_t_s.append(t)
                s.device_allocated_bytes.append(reading.allocated_bytes)
                s.device_reserved_bytes.append(reading.reserved_bytes)
                s.device_nvml_used_bytes.append(reading.nvml_used_bytes)

    def set_interval(self, interval_s: float) -> None:
        """Sample every `interval_s` from now on (the session slows sampling during decode)."""
        if interval_s <= 0 or interval_s == self.interval_s:
            return
        self.interval_s = interval_s  # the thread reads it at its next wait
        child = self._child
        if child is not None and child.stdin is not None:
            try:
                child.stdin.write(f"{interval_s!r}\n".encode())
                child.stdin.flush()
            except OSError:  # the child is gone: its samples so far are still read at stop
                pass

    def start(self) -> None:
        self.sample_once()
        if self._wants_process() and self._start_child():
            self.mode_used = "process"
            return
        self.mode_used = "thread"
        self._thread = threading.Thread(target=self._loop, name="lmprof-memory-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._child is not None:
            self._collect_child()
        self.sample_once()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    # --- the child process -----------------------------------------------------------------

    def _wants_process(self) -> bool:
        if self._mode == "thread" or self._device.is_cuda or self._read_host is not read_memory:
            return False
        return process_sampling_available()

    def _start_child(self) -> bool:
        fd, name = tempfile.mkstemp(prefix="lmprof-rss-", suffix=".bin")
        os.close(fd)
        self._child_file = Path(name)
        self._clock_offset_s = time.perf_counter() - self._now_s()
        command = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _CHILD_PROGRAM,
            str(os.getpid()),
            repr(self.interval_s),
            name,
        ]
        try:
            self._child = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError:
            self._child_file.unlink(missing_ok=True)
            self._child = self._child_file = None
            return False
        return True

    def _collect_child(self) -> None:
        child, path = self._child, self._child_file
        self._child = self._child_file = None
        assert child is not None and path is not None
        if child.stdin is not None:
            child.stdin.close()  # the child's signal to write its last sample and exit
        self.child_cpu_s = _reap(child)
        data = path.read_bytes() if path.exists() else b""
        path.unlink(missing_ok=True)
        usable = len(data) - len(data) % _RECORD.size  # a killed child may leave half a record
        offset = self._clock_offset_s
        merged = list(zip(self.samples.t_s, self.samples.rss_bytes, self.samples.file_rss_bytes))
        merged += [(t - offset, rss, f) for t, rss, f in _RECORD.iter_unpack(data[:usable])]
        merged.sort(key=lambda row: row[0])
        with self._lock:
            s = self.samples
            s.t_s = [row[0] for row in merged]
            s.rss_bytes = [row[1] for row in merged]
            s.file_rss_bytes = [row[2] for row in merged]
