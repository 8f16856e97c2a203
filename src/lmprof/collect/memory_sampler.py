"""A background thread that samples host RSS (and device memory) on the session clock.

The thread sleeps between samples, so between reads it holds neither the GIL nor a
core; each host read costs ~20 us (one /proc read through psutil). Samples are kept
as parallel columns (time, values) because a 10 ms interval over a minute is 6000
rows, and columns serialize compactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from lmprof.collect.device import CpuDevice, CudaDevice
from lmprof.collect.process_stats import read_memory

DEFAULT_INTERVAL_S = 0.010


@dataclass
class MemorySamples:
    t_s: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)
    file_rss_bytes: list[int] = field(default_factory=list)
    device_t_s: list[float] = field(default_factory=list)
    device_allocated_bytes: list[int] = field(default_factory=list)
    device_reserved_bytes: list[int] = field(default_factory=list)
    device_nvml_used_bytes: list[int | None] = field(default_factory=list)


class MemorySampler:
    """Start, stop, and read back `samples`. Never prints."""

    def __init__(
        self,
        now_s: Callable[[], float],
        interval_s: float = DEFAULT_INTERVAL_S,
        device: CpuDevice | CudaDevice | None = None,
        read_host: Callable[[], tuple[int, int]] = read_memory,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("sampling interval must be positive")
        self.interval_s = interval_s
        self.samples = MemorySamples()
        self._now_s = now_s
        self._device = device if device is not None else CpuDevice()
        self._read_host = read_host
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

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

    def start(self) -> None:
        self.sample_once()
        self._thread = threading.Thread(target=self._loop, name="lmprof-memory-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample_once()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()
