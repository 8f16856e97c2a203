"""The wall time of each prefill and decode step, measured where the work runs: CUDA events on
a GPU (the host clock would time the launch, not the kernels), the host clock on a CPU."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from lmprof.clock import cuda_event


class StepTimer:
    """Wall time of each timed region: CUDA events on CUDA (read after one sync), else a host clock."""

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.clock = clock
        self._host: list[float] = []
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._start: float | torch.cuda.Event | None = None

    def start(self) -> None:
        if self.cuda:
            self._start = cuda_event(self.device)
        else:
            self._start = self.clock()

    def stop(self) -> None:
        if self.cuda:
            self._events.append((self._start, cuda_event(self.device)))
        else:
            self._host.append(self.clock() - self._start)

    def durations_s(self) -> list[float]:
        if not self.cuda:
            return list(self._host)
        torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) / 1000.0 for start, end in self._events]
