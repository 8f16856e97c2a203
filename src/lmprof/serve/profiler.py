"""What the server records about itself: every request's phases, every engine step, and host
(and device) memory over time, on one monotonic clock whose zero is the server's start.

Collecting is cheap (appends and a sampling thread), so it always runs; `--profile-out` only
decides whether the record is written. The clock and the device-memory reader are injected,
which keeps this module torch-free and testable with a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

from lmprof.record.serve import EngineStep, MemorySample, ServedRequest, ServeRun

MEMORY_INTERVAL_S = 0.1
# A server may run for days: past these counts, memory samples thin out (every other one
# dropped, the interval doubled) and engine steps stop being kept one by one (counted only).
MAX_MEMORY_SAMPLES = 20_000
MAX_STEPS_KEPT = 200_000


class ServerProfiler:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        device_memory_bytes: Callable[[], int | None] = lambda: None,
        memory_interval_s: float = MEMORY_INTERVAL_S,
    ) -> None:
        self.clock = clock
        self.zero = clock()
        self.started_unix_s = time.time()
        self.device_memory_bytes = device_memory_bytes
        self.memory_interval_s = memory_interval_s
        # Appended from the loop (requests) and the model thread (steps, samples): list.append
        # is atomic, and nothing reads them until the server has stopped.
        self.requests: list[ServedRequest] = []
        self.steps: list[EngineStep] = []
        self.memory: list[MemorySample] = []
        self.steps_dropped = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_memory, name="lmprof-memory", daemon=True)

    def now_s(self) -> float:
        return self.clock() - self.zero

    def new_request(
        self, request_id: str, endpoint: str, stream: bool, arrived_s: float | None = None
    ) -> ServedRequest:
        """A request's record; `arrived_s` (default now) is when its handler began."""
        record = ServedRequest(
            request_id=request_id,
            endpoint=endpoint,
            stream=stream,
            arrived_s=self.now_s() if arrived_s is None else arrived_s,
        )
        self.requests.append(record)
        return record

    def add_step(self, step: EngineStep) -> None:
        if len(self.steps) < MAX_STEPS_KEPT:
            self.steps.append(step)
        else:
            self.steps_dropped += 1

    def start(self) -> None:
        self.sample_memory_once()
        self._sampler.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join(5.0)
        self.sample_memory_once()

    def sample_memory_once(self) -> None:
        if len(self.memory) >= MAX_MEMORY_SAMPLES:
            self.memory = self.memory[::2]
            self.memory_interval_s *= 2
        self.memory.append(
            MemorySample(self.now_s(), self._process.memory_info().rss, self.device_memory_bytes())
        )

    def _sample_memory(self) -> None:
        while not self._stop.wait(self.memory_interval_s):
            self.sample_memory_once()

    def to_run(self, settings: dict, model: dict, environment: dict) -> ServeRun:
        return ServeRun(
            settings=settings,
            model=model,
            environment=environment,
            started_unix_s=self.started_unix_s,
            ended_s=self.now_s(),
            requests=list(self.requests),
            steps=list(self.steps),
            memory=list(self.memory),
            steps_dropped=self.steps_dropped,
        )
