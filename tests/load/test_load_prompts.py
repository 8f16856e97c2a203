"""Synthetic prompts: lengths (fixed, or drawn per request with a range ratio), a shared prefix
for a share, exact repeats, a seed."""

from __future__ import annotations

import json

import pytest

from lmprof.errors import UsageError
from lmprof.load.options import LoadOptions
from lmprof.load.prompts import PromptSource
from lmprof.record.load import length_bounds


def source(**kw) -> PromptSource:
    return PromptSource(LoadOptions(base_url="http://x", input_tokens=40, output_tokens=7, **kw))


def test_lengths_and_seed():
    a = [source(seed=1).get(i) for i in range(20)]
    assert all(len(p.text.split()) == 40 and p.output_tokens == 7 for p in a)
    assert [p.text for p in a] == [source(seed=1).get(i).text for i in range(20)]
    assert a[0].text != source(seed=2).get(0).text


def test_prefix_share():
    src = source(prefix_tokens=30, prefix_share=0.25)
    prompts = [src.get(i) for i in range(2000)]
    prefixed = [p for p in prompts if p.prefixed]
    assert len(prefixed) / 2000 == pytest.approx(0.25, abs=0.03)
    prefix = " ".join(prefixed[0].text.split()[:30])
    assert all(p.text.startswith(prefix) and len(p.text.split()) == 40 for p in prefixed)
    assert not any(p.text.startswith(prefix) for p in prompts if not p.prefixed)


def test_repeat_share_repeats_an_earlier_prompt_exactly():
    src = source(repeat_share=0.3)
    prompts = [src.get(i) for i in range(1000)]
    repeats = [(i, p) for i, p in enumerate(prompts) if p.repeat_of is not None]
    assert len(repeats) / 1000 == pytest.approx(0.3, abs=0.04)
    for i, p in repeats:
        assert p.repeat_of < i and prompts[p.repeat_of].repeat_of is None
        assert p.text == prompts[p.repeat_of].text


def test_prompts_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "a b"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "c"}], "max_tokens": 3})
        + "\n"
    )
    src = PromptSource(LoadOptions(base_url="http://x", prompts_file=str(path)))
    assert src.get(0).text == "a b" and src.get(1).output_tokens == 3 and src.get(2).text == "a b"
    path.write_text("not json\n")
    with pytest.raises(UsageError, match="line 1"):
        PromptSource(LoadOptions(base_url="http://x", prompts_file=str(path)))


# --- --range-ratio: each request draws its lengths -------------------------------------------


def test_length_bounds_are_vllms_range_rounded_and_at_least_one():
    assert length_bounds(32, 0.75) == (8, 56)
    assert length_bounds(64, 0.5) == (32, 96)
    assert length_bounds(7, 0.0) == (7, 7)
    assert length_bounds(1, 0.9) == (1, 2)  # round(0.1) is 0: a request asks at least one token


def test_range_ratio_draws_every_length_within_its_bounds():
    src = source(range_ratio=0.5)  # 40 in, 7 out
    prompts = [src.get(i) for i in range(600)]
    inputs = [p.input_tokens for p in prompts]
    outputs = [p.output_tokens for p in prompts]
    assert (min(inputs), max(inputs)) == (20, 60) and (min(outputs), max(outputs)) == (4, 10)
    assert len(set(inputs)) == 41 and len(set(outputs)) == 7  # every length in the range is drawn
    assert all(len(p.text.split()) == p.input_tokens for p in prompts)  # the text is as long as planned
    assert sum(inputs) / len(inputs) == pytest.approx(40, abs=1.5)  # uniform: centred on the length asked


def test_range_ratio_is_a_pure_function_of_the_seed():
    a = [source(seed=3, range_ratio=0.75).get(i) for i in range(50)]
    b = [source(seed=3, range_ratio=0.75).get(i) for i in range(50)]
    assert a == b  # texts, input and output lengths: two servers get identical work
    other = [source(seed=4, range_ratio=0.75).get(i) for i in range(50)]
    assert [p.output_tokens for p in a] != [p.output_tokens for p in other]


def test_range_ratio_zero_gives_fixed_lengths_and_leaves_the_other_draws_alone():
    fixed = [source(seed=5, range_ratio=0.0, prefix_tokens=10, prefix_share=0.5).get(i) for i in range(200)]
    assert {(p.input_tokens, p.output_tokens) for p in fixed} == {(40, 7)}
    assert all(len(p.text.split()) == 40 for p in fixed)
    # The lengths come from a generator of their own: which requests share the prefix does not move.
    varied = [source(seed=5, range_ratio=0.5, prefix_tokens=10, prefix_share=0.5).get(i) for i in range(200)]
    assert [p.prefixed for p in varied] == [p.prefixed for p in fixed]
    prefix = " ".join(next(p for p in fixed if p.prefixed).text.split()[:10])
    assert all(
        p.text.startswith(prefix) and len(p.text.split()) == p.input_tokens for p in varied if p.prefixed
    )


def test_a_repeat_asks_what_its_original_asked():
    src = source(range_ratio=0.75, repeat_share=0.5)
    prompts = [src.get(i) for i in range(200)]
    repeats = [p for p in prompts if p.repeat_of is not None]
    assert repeats
    for p in repeats:
        original = prompts[p.repeat_of]
        assert (p.text, p.input_tokens, p.output_tokens) == (
            original.text, original.input_tokens, original.output_tokens,
        )  # fmt: skip
