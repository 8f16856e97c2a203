"""Synthetic prompts: lengths, a shared prefix for a share, exact repeats, a seed."""

from __future__ import annotations

import json

import pytest

from lmprof.errors import UsageError
from lmprof.load.options import LoadOptions
from lmprof.load.prompts import PromptSource


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
