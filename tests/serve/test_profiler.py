"""The server's self-profile on a fake clock: one timeline from the server's start, and bounded
memory for a server that runs for days."""

from __future__ import annotations

import lmprof.serve.profiler as profiler_module
from lmprof.record.serve import EngineStep, ServeRun
from lmprof.serve.profiler import ServerProfiler


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_times_run_from_the_server_start():
    clock = FakeClock()
    prof = ServerProfiler(clock=clock, device_memory_bytes=lambda: 123)
    clock.t += 2.5
    record = prof.new_request("a", "completions", stream=True)
    prof.sample_memory_once()
    clock.t += 1.0
    run = prof.to_run({"scheduler": "async"}, {"id": "m"}, {})
    assert record.arrived_s == 2.5 and prof.memory[-1].t_s == 2.5
    assert prof.memory[-1].device_allocated_bytes == 123 and prof.memory[-1].rss_bytes > 0
    assert run.ended_s == 3.5 and run.kind == "serve"
    assert ServeRun.from_dict(run.to_dict()) == run


def test_long_lives_stay_bounded(monkeypatch):
    monkeypatch.setattr(profiler_module, "MAX_MEMORY_SAMPLES", 8)
    monkeypatch.setattr(profiler_module, "MAX_STEPS_KEPT", 5)
    clock = FakeClock()
    prof = ServerProfiler(clock=clock, memory_interval_s=0.1)
    for i in range(20):
        clock.t += 0.1
        prof.sample_memory_once()
        prof.add_step(EngineStep(i, i + 1, "decode", 1, 1))
    assert len(prof.memory) <= 8 and prof.memory_interval_s > 0.1
    assert prof.memory[-1].t_s == prof.now_s()  # the newest sample is kept
    assert len(prof.steps) == 5 and prof.steps_dropped == 15
    assert prof.to_run({}, {}, {}).steps_dropped == 15
