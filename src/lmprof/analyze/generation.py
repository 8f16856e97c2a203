"""Generation figures derived from step timings: TTFT, TPOT, percentiles, tokens per second."""

from __future__ import annotations

from collections.abc import Sequence

from lmprof.record.run import Generation

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def derive_generation_figures(gen: Generation) -> Generation:
    """Fill ttft_s, tpot_s, inter-token percentiles and tokens/s from the measured times.

    TTFT runs from the start of the user-visible call (a pipeline call includes its
    tokenization) to the first new token. TPOT is decode time over the tokens after the
    first, so prefill never leaks into it.
    """
    gen.ttft_s = gen.first_token_s - gen.start_s
    steps = gen.decode_step_latencies_s
    decode_tokens = max(gen.new_tokens - 1, 0) * gen.batch_size
    gen.tpot_s = gen.decode_s / (gen.new_tokens - 1) if gen.new_tokens > 1 and gen.decode_s > 0 else None
    gen.itl_percentiles_s = {f"p{q}": percentile(steps, q) for q in PERCENTILES} if steps else {}
    prompt_total = gen.prompt_tokens * gen.batch_size
    gen.prefill_tokens_per_s = prompt_total / gen.prefill_s if gen.prefill_s > 0 and prompt_total else None
    gen.decode_tokens_per_s = decode_tokens / gen.decode_s if gen.decode_s > 0 and decode_tokens else None
    return gen
