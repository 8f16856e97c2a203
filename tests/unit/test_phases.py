import threading

import pytest

from lmprof.clock import FakeClock
from lmprof.collect.phases import PhaseRecorder
from lmprof.collect.process_stats import ProcessSnapshot


class FakeProcess:
    def __init__(self):
        self.rss = 100
        self.file_rss = 10
        self.disk = 0
        self.minor = 0

    def read(self):
        return ProcessSnapshot(self.rss, self.file_rss, self.disk, 0, self.minor)


def make(clock=None, proc=None, on_boundary=None):
    clock = clock or FakeClock()
    proc = proc or FakeProcess()
    return clock, proc, PhaseRecorder(clock.as_clock(), 0.0, read=proc.read, on_boundary=on_boundary)


def test_nested_phases_record_times_cpu_memory_and_parents():
    clock, proc, rec = make()
    with rec.phase("load"):
        clock.advance(1.0, 0.5)
        with rec.phase("read_weights") as h:
            clock.advance(2.0, 1.5)
            proc.rss, proc.file_rss, proc.disk, proc.minor = 300, 210, 4096, 7
            h.add_payload(200)
        clock.advance(0.5, 0.5)
    load, read = rec.phases
    assert (load.name, load.start_s, load.end_s, load.cpu_s, load.depth, load.parent_index) == (
        "load",
        0,
        3.5,
        2.5,
        0,
        None,
    )
    assert (read.start_s, read.end_s, read.wall_s, read.cpu_s, read.depth, read.parent_index) == (
        1.0,
        3.0,
        2.0,
        1.5,
        1,
        0,
    )
    assert read.rss_start_bytes == 100 and read.rss_end_bytes == 300
    assert read.file_rss_end_bytes - read.file_rss_start_bytes == 200
    assert read.disk_read_bytes == 4096 and read.minor_faults == 7
    assert read.payload_bytes == 200 and read.payload_gbps == pytest.approx(200 / 2.0 / 1e9)


def test_reentrant_same_name_is_one_phase():
    clock, _, rec = make()
    with rec.phase("tokenize"):
        clock.advance(1.0)
        with rec.phase("tokenize") as inner:
            assert not inner.recording
            clock.advance(1.0)
    assert [p.name for p in rec.phases] == ["tokenize"]
    assert rec.phases[0].wall_s == 2.0


def test_exception_marks_phase_incomplete_and_unwinds_children():
    clock, _, rec = make()
    outer = rec.open("generate")
    rec.open("decode")  # left open by an exception below it
    clock.advance(1.0)
    rec.close(outer, complete=False)
    names = {p.name: p for p in rec.phases}
    assert set(names) == {"generate", "decode"}
    assert not names["decode"].complete and not names["generate"].complete


def test_close_all_on_interrupt():
    clock, _, rec = make()
    rec.open("a")
    rec.open("b")
    clock.advance(1.0)
    rec.close_all(complete=False)
    assert [(p.name, p.complete) for p in rec.phases] == [("a", False), ("b", False)]


def test_other_threads_do_not_record():
    _, _, rec = make()
    result = []
    t = threading.Thread(target=lambda: result.append(rec.open("tokenize")))
    t.start()
    t.join()
    assert result == [None] and rec.phases == []


def test_boundaries_trigger_sampling():
    calls = []
    _, _, rec = make(on_boundary=lambda: calls.append(1))
    with rec.phase("x"):
        pass
    assert len(calls) == 2


def test_add_span_before_first_phase_only():
    clock, _, rec = make()
    span = rec.add_span("python_startup", -0.3, 0.0, cpu_s=0.2)
    assert span.wall_s == pytest.approx(0.3) and span.cpu_s == 0.2
    with rec.phase("import_torch"):
        clock.advance(1.0)
    assert [p.name for p in rec.phases] == ["python_startup", "import_torch"]
    with pytest.raises(RuntimeError):
        rec.add_span("late", 0, 1, cpu_s=0)
