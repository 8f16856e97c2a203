"""The cost-of-watching line says how the traced call's pace compared, in words that hold both
ways: a ratio under 1 is noise between the two calls, and the line says so."""

from lmprof.render.deep_view import traced_pace


def test_a_slower_traced_call_reads_as_its_ratio():
    words = traced_pace("torch.profiler", {"decode_slowdown": 1.16, "prefill_slowdown": 1.44})
    assert "decode took 1.16x and its prefill 1.44x the untraced repeat's time" in words
    assert "noise" not in words


def test_a_ratio_under_one_is_called_noise_not_a_slowdown():
    words = traced_pace("torch.profiler", {"decode_slowdown": 0.52, "prefill_slowdown": 0.91})
    assert "0.52x" in words and "slower" not in words and "noise" in words
