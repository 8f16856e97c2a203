"""The one clock every collector reads, injectable so timing logic is tested without sleeps.

All times in a Run are seconds since the session started, read from `perf_counter`
(monotonic, highest resolution). CPU time comes from `process_time` (all threads).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Clock:
    """Wall and CPU clocks; tests pass fakes."""

    wall: Callable[[], float] = time.perf_counter
    cpu: Callable[[], float] = time.process_time


@dataclass
class FakeClock:
    """A clock that moves only when told: `advance(wall_s, cpu_s)`."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    _calls: int = field(default=0, repr=False)

    def advance(self, wall_s: float, cpu_s: float = 0.0) -> None:
        self.wall_s += wall_s
        self.cpu_s += cpu_s

    def as_clock(self) -> Clock:
        return Clock(wall=lambda: self.wall_s, cpu=lambda: self.cpu_s)


def cuda_event(device: Any) -> Any:
    """A CUDA timing event recorded now on `device`'s current stream (device: an index, "cuda:1"
    or a torch.device). Event.record() with no stream records on the current device's, which is
    cuda:0 unless set: for a model on cuda:1 it would time an idle stream of another GPU."""
    import torch

    event = torch.cuda.Event(enable_timing=True)
    event.record(torch.cuda.current_stream(device))
    return event
