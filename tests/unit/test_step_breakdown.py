"""The decode-step breakdown on hand-built trace spans: which part each span's own time is."""

from __future__ import annotations

import pytest

from lmprof.analyze.inside_run import module_category, shape_label, step_breakdown
from lmprof.analyze.trace_tree import build_tree
from lmprof.collect.trace_events import Span


def span(name: str, cat: str, start_s: float, dur_s: float) -> Span:
    return Span(name=name, cat=cat, start_s=start_s, dur_s=dur_s, tid=1)


def parts(spans: list[Span], window=(0.0, 10.0)) -> dict[str, float]:
    spans = sorted(spans, key=lambda s: (s.start_s, -s.dur_s))
    return step_breakdown(build_tree(spans, 1), {"decode": window}, {"decode": 1})["decode"]["parts_s"]


def test_python_between_ops_and_ops_in_modules():
    got = parts([
        span("module:Model", "user_annotation", 0.0, 6.0),
        span("module:layers.0.self_attn", "user_annotation", 1.0, 3.0),
        span("aten::mm", "cpu_op", 1.5, 1.0),
    ])  # fmt: skip
    assert got["attention"] == pytest.approx(1.0)
    # the attention range's own 2 s and the root's own 3 s are Python between ops
    assert got["python_in_model"] == pytest.approx(5.0)
    assert got["outside_model"] == pytest.approx(4.0)


def test_module_ranges_opened_inside_an_operator_are_that_operators_time():
    # lmprof's native decode step opens the model's module ranges from C++, inside its op
    got = parts([
        span("module:Model", "user_annotation", 0.0, 10.0),
        span("lmprof_native::decode_step", "cpu_op", 1.0, 8.0),
        span("module:layers.0.mlp", "user_annotation", 2.0, 4.0),
        span("lmprof_native::matvec", "cpu_op", 2.5, 2.0),
        span("module:layers.0.attention_norm", "user_annotation", 6.5, 1.0),
    ])  # fmt: skip
    assert got["mlp"] == pytest.approx(4.0)  # the matvec and the range's own 2 s
    assert got["norm"] == pytest.approx(1.0)
    assert got["python_in_model"] == pytest.approx(2.0)  # only the root's own time, outside the op
    assert got["other_in_model"] == pytest.approx(3.0)  # the op's own time outside any part


@pytest.mark.parametrize(
    "path,part",
    [
        ("model.layers.3.post_attention_layernorm", "norm"),
        ("model.layers.3.input_layernorm", "norm"),
        ("layers.3.attention_norm", "norm"),
        ("layers.3.attention", "attention"),
        ("model.layers.3.self_attn", "attention"),
        ("layers.3.mlp", "mlp"),
        ("lm_head", "lm_head"),
        ("model.embed_tokens", "embedding"),
    ],
)
def test_module_category(path, part):
    assert module_category(path) == part


def test_shape_label_summarizes_tensor_lists():
    assert shape_label([[1, 576], [], [[1, 3, 8, 64]] * 30, [[4, 4], [8]]]) == (
        "[[1, 576], [], 30 × [1, 3, 8, 64], 2 tensors]"
    )
