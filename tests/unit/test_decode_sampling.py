"""The session samples memory less often during decode (its memory moves one token of KV cache
a step) and at the interval asked everywhere else; the child sampler process takes the change."""

import time

from lmprof.collect.memory_sampler import MemorySampler, process_sampling_available
from lmprof.session import DECODE_SAMPLE_FACTOR, ProfileSession


def test_decode_phases_slow_the_sampler_and_restore_it():
    session = ProfileSession(sample_interval_s=0.01, instrument=False).start()
    try:
        seen = []
        outer = session.phases.open("generate")
        seen.append(session.sampler.interval_s)
        decode = session.phases.open("decode")
        seen.append(session.sampler.interval_s)
        session.phases.close(decode)
        seen.append(session.sampler.interval_s)
        session.phases.close(outer)
    finally:
        run = session.stop()
    assert seen == [0.01, 0.01 * DECODE_SAMPLE_FACTOR, 0.01]
    assert run.settings["decode_sample_interval_s"] == 0.01 * DECODE_SAMPLE_FACTOR
    assert run.memory.interval_s == 0.01


def test_the_child_sampler_takes_a_new_interval():
    if not process_sampling_available():
        import pytest

        pytest.skip("no child-process sampling on this platform")
    sampler = MemorySampler(time.perf_counter, 0.005, mode="process")
    sampler.start()
    time.sleep(0.3)
    sampler.set_interval(0.1)
    time.sleep(0.05)  # let a sample at the old rate land before counting
    switched_s = time.perf_counter()
    time.sleep(0.6)
    sampler.stop()
    t = sampler.samples.t_s
    fast = sum(1 for x in t if x < switched_s - 0.06)
    slow = sum(1 for x in t if x > switched_s)
    assert sampler.mode_used == "process"
    assert fast >= 20  # ~0.24 s at 5 ms
    assert slow <= 10  # ~0.6 s at 100 ms: 6, plus the stop's own sample
