"""When open-loop requests arrive: gaps drawn from a gamma distribution with shape
`burstiness` and mean 1/rate, as vLLM's serving benchmark draws them. Shape 1 is the
exponential, so arrivals are Poisson; below 1 they come in bursts, above 1 more evenly.
Pure and seeded: tests check the rate without a clock."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator


def arrival_gaps_s(rate_rps: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """An endless stream of gaps between arrivals, in seconds; an infinite rate sends
    everything at once (vLLM's default, usually with a concurrency cap)."""
    if math.isinf(rate_rps):
        while True:
            yield 0.0
    rng = random.Random(f"{seed}:arrivals:{rate_rps}:{burstiness}")
    scale = 1.0 / (rate_rps * burstiness)  # mean = shape * scale = 1 / rate
    while True:
        yield rng.gammavariate(burstiness, scale)


def arrival_times_s(rate_rps: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Arrival times from the level's start: the first at 0, as vLLM sends its first request at once."""
    t = 0.0
    gaps = arrival_gaps_s(rate_rps, burstiness, seed)
    while True:
        yield t
        t += next(gaps)
