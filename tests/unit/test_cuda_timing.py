"""CUDA timing wiring, on a CPU machine: torch.cuda's entry points are stood in for, and the
tests check what lmprof asks of them. (tests/e2e/test_gpu.py runs the real thing on a GPU.)

A model on cuda:1 runs its kernels on cuda:1's stream; an event recorded with no stream goes
on the current device's (cuda:0 unless set), and would time an idle GPU."""

from __future__ import annotations

import pytest
import torch

from lmprof.collect.device import CudaDevice
from lmprof.engine.step_timer import StepTimer


class FakeEvent:
    def __init__(self, enable_timing: bool = False) -> None:
        self.stream = None

    def record(self, stream=None) -> None:
        self.stream = stream

    def elapsed_time(self, end: FakeEvent) -> float:
        return 2.0  # ms

    def synchronize(self) -> None:
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"stream of {device}")
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: "init" in calls)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(f"synchronize {device}"))
    return calls


def test_the_device_initializes_cuda_before_a_window_and_records_on_its_own_stream(fake_cuda):
    device = CudaDevice(index=1)
    assert fake_cuda == []  # not at construction: --device cuda without a GPU gets its one line first
    device.open_window()
    device.open_window()
    assert fake_cuda == ["init", "reset", "reset"]  # once, before the first reset of peak stats
    assert device.record_event().stream == "stream of 1"


def test_engine_steps_are_timed_on_the_models_device(fake_cuda):
    timer = StepTimer(torch.device("cuda", 1))
    timer.start()
    timer.stop()
    ((start, end),) = timer._events
    assert start.stream == end.stream == "stream of cuda:1"
    assert timer.durations_s() == [pytest.approx(0.002)]
    assert fake_cuda[-1] == "synchronize cuda:1"


def test_probes_are_timed_on_the_probed_device(fake_cuda, monkeypatch):
    from lmprof.collect.hardware_probes import op_timer

    recorded: list[FakeEvent] = []

    class Recorded(FakeEvent):
        def __init__(self, enable_timing: bool = False) -> None:
            super().__init__(enable_timing)
            recorded.append(self)

    monkeypatch.setattr(torch.cuda, "Event", Recorded)
    assert op_timer("cuda:1")(lambda: None) == pytest.approx(0.002)
    assert [event.stream for event in recorded] == ["stream of cuda:1", "stream of cuda:1"]
