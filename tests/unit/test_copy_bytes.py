"""The copies table's bytes: from the input shapes where --deep-shapes recorded them, else from
what the allocator gave out inside the copy (its destination)."""

from lmprof.analyze.inside_run import copy_rows
from lmprof.analyze.trace_tree import build_tree
from lmprof.collect.trace_events import Span

MAIN = 1


def _alloc(t_s: float, n_bytes: int, tid=MAIN) -> Span:
    return Span("[memory]", "memory", t_s, 0.0, tid, {"Bytes": n_bytes, "Total Allocated": 0})


def _rows(spans):
    ops = [s for s in spans if s.cat != "memory"]
    memory = [s for s in spans if s.cat == "memory"]
    roots = build_tree(sorted(ops, key=lambda s: (s.start_s, -s.dur_s)), MAIN)
    rows = copy_rows(roots, {"decode": (0.0, 10.0)}, {}, memory)
    return {r["op"]: r for r in rows}


def test_a_cast_without_shapes_counts_the_bytes_allocated_inside_it():
    spans = [
        Span("aten::to", "cpu_op", 1.0, 0.5, MAIN),
        Span("aten::_to_copy", "cpu_op", 1.1, 0.3, MAIN),  # nested: one copy, not two
        _alloc(1.2, 4096),  # the destination
        _alloc(1.3, -512),  # a free inside it is not a copy's bytes
        _alloc(1.35, 1024, tid=2),  # another thread's allocation is not this copy's
        _alloc(2.0, 1 << 20),  # after the copy: not its
        Span("aten::to", "cpu_op", 3.0, 0.5, MAIN),
        _alloc(3.1, 8192),
        Span("aten::copy_", "cpu_op", 5.0, 0.5, MAIN),  # in place: allocates nothing
    ]
    rows = _rows(spans)
    assert rows["aten::to"]["calls"] == 2 and rows["aten::to"]["bytes"] == 4096 + 8192
    assert rows["aten::copy_"]["bytes"] == 0  # not measured: rendered as "-"
    assert "aten::_to_copy" not in rows


def test_recorded_shapes_give_the_input_size_first():
    spans = [
        Span("aten::to", "cpu_op", 1.0, 0.5, MAIN, {"Input Dims": [[4, 8]], "Input type": ["float"]}),
        _alloc(1.2, 64),
    ]
    assert _rows(spans)["aten::to"]["bytes"] == 4 * 8 * 4
