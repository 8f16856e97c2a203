import time

from lmprof.clock import FakeClock
from lmprof.collect.memory_sampler import MemorySampler


def test_sample_once_records_aligned_columns():
    clock = FakeClock()
    values = iter([(100, 10), (250, 20)])
    sampler = MemorySampler(lambda: clock.wall_s, 0.01, read_host=lambda: next(values))
    sampler.sample_once()
    clock.advance(0.5)
    sampler.sample_once()
    s = sampler.samples
    assert s.t_s == [0.0, 0.5] and s.rss_bytes == [100, 250] and s.file_rss_bytes == [10, 20]
    assert s.device_t_s == []  # the CPU device has nothing to sample


def test_thread_samples_at_the_interval():
    t0 = time.perf_counter()
    sampler = MemorySampler(lambda: time.perf_counter() - t0, 0.005)
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    s = sampler.samples
    # 0.2 s at 5 ms is ~40 samples; a loaded CI machine may deliver fewer, never zero.
    assert 10 <= len(s.t_s) <= 45
    assert s.t_s == sorted(s.t_s)
    assert len(s.t_s) == len(s.rss_bytes) == len(s.file_rss_bytes)
    assert all(r > 0 for r in s.rss_bytes)
