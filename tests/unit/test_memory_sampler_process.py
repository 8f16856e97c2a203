"""The memory sampler's child process: samples from outside the interpreter lock, on the
session's clock, merged in time order with the in-process boundary samples."""

import mmap
import time

import pytest

from lmprof.collect.memory_sampler import MemorySampler, process_sampling_available

pytestmark = pytest.mark.skipif(not process_sampling_available(), reason="needs /proc (Linux)")


def test_child_process_samples_on_the_session_clock():
    t0 = time.perf_counter()
    sampler = MemorySampler(lambda: time.perf_counter() - t0, 0.005)
    sampler.start()
    assert sampler.mode_used == "process"
    # 64 MiB of a fresh mapping, touched: RSS must show it (a bytearray can reuse heap that this
    # long-lived test process already holds resident, and then RSS does not move)
    held = mmap.mmap(-1, 64 << 20)
    for offset in range(0, len(held), mmap.PAGESIZE):
        held[offset] = 1
    time.sleep(0.4)
    sampler.sample_once()  # a phase boundary, in the process
    end_s = time.perf_counter() - t0
    sampler.stop()
    s = sampler.samples
    assert s.t_s == sorted(s.t_s) and len(s.t_s) == len(s.rss_bytes) == len(s.file_rss_bytes)
    assert len(s.t_s) >= 10  # 0.4 s at 5 ms, less the child's start on a busy machine
    assert 0.0 <= s.t_s[0] and s.t_s[-1] <= time.perf_counter() - t0
    child = [t for t in s.t_s if 0.0 < t < end_s]
    assert len(child) >= 8, "the child's samples are on the session clock, inside the window"
    assert max(s.rss_bytes) - min(s.rss_bytes) >= 60 << 20
    held.close()


def test_thread_mode_and_a_custom_reader_keep_the_thread():
    assert MemorySampler(time.perf_counter, 0.01, mode="thread")._wants_process() is False
    assert MemorySampler(time.perf_counter, 0.01, read_host=lambda: (1, 1))._wants_process() is False
    with pytest.raises(ValueError, match="mode"):
        MemorySampler(time.perf_counter, 0.01, mode="fork")
