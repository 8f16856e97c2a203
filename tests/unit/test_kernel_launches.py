"""Kernels on hand-built trace spans: each is charged to the host call that launched it, whether
that call went through the CUDA runtime (cudaLaunchKernel) or the driver (cuLaunchKernel, as
torch.compile's Triton kernels do)."""

from __future__ import annotations

import pytest

from lmprof.analyze.flames import device_flame
from lmprof.analyze.inside_run import kernels_by_launch
from lmprof.analyze.trace_tree import build_tree
from lmprof.collect.trace_events import CLOCK_MARKER, Span, read_spans


@pytest.mark.parametrize(
    ("category", "launch"), [("cuda_runtime", "cudaLaunchKernel"), ("cuda_driver", "cuLaunchKernel")]
)
def test_a_kernel_is_charged_to_its_launch(category, launch):
    spans = [
        Span("aten::mm", "cpu_op", 0.0, 2.0, tid=1),
        Span(launch, category, 0.5, 0.1, tid=1, args={"correlation": 7}),
        Span("triton_poi_fused_mul_0", "kernel", 0.7, 1.0, tid=7, args={"correlation": 7}),
    ]
    roots = build_tree(sorted(spans, key=lambda s: (s.start_s, -s.dur_s)), 1)
    flame = device_flame([], roots, kernels_by_launch(spans))
    assert flame is not None
    stacks = {";".join(stack): seconds for stack, seconds in zip(flame.stacks, flame.weights)}
    assert stacks == {
        f"phase:(unattributed);op:aten::mm;cuda:{launch};kernel:triton_poi_fused_mul_0": pytest.approx(1.0)
    }


def test_driver_launches_are_read_from_the_trace():
    events = [  # Chrome-trace events as torch.profiler exports them (µs)
        {"name": CLOCK_MARKER, "ph": "X", "cat": "user_annotation", "ts": 1000.0, "dur": 1.0, "tid": 1},
        {"name": "cuLaunchKernel", "ph": "X", "cat": "cuda_driver", "ts": 1500.0, "dur": 5.0, "tid": 1,
         "args": {"correlation": 7}},
        {"name": "triton_poi_fused_mul_0", "ph": "X", "cat": "kernel", "ts": 1510.0, "dur": 20.0, "tid": 7,
         "args": {"correlation": 7}},
    ]  # fmt: skip
    spans = read_spans(events, marker_s=2.0)
    assert [(s.name, s.cat) for s in spans] == [
        ("cuLaunchKernel", "cuda_driver"),
        ("triton_poi_fused_mul_0", "kernel"),
    ]
    assert spans[0].start_s == pytest.approx(2.0005)
