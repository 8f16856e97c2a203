"""Does profiling slow what it measures? Decode tokens/s with and without lmprof, side by side.

Same process, same model, interleaved rounds (A B A B ...), so drift in machine load hits
both arms alike. Decode tokens/s is read the same way in both arms, by a streamer that
stamps each token as generate emits it; the lmprof arm runs the full default session
(memory sampler thread at 10 ms, phase instrumentation, per-step forward hooks).

    python benchmarks/overhead.py [MODEL] [--rounds 5] [--new-tokens 64] [--threads N]

Target (issue #2): lmprof's decode tokens/s at most 3% below the baseline's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lmprof
from lmprof.models import resolve_model
from lmprof.workloads.request import DEFAULT_PROMPT


class TokenClock:
    """A generate() streamer that records when each new token arrives."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate first puts the prompt
            self._prompt_seen = True
            return
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass

    def decode_tokens_per_s(self) -> float:
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


def one_round(model, inputs, new_tokens: int) -> float:
    clock = TokenClock()
    model.generate(
        **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=clock
    )
    return clock.decode_tokens_per_s()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    resolved = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    inputs = tokenizer(DEFAULT_PROMPT, return_tensors="pt")
    one_round(model, inputs, 8)  # warm-up: first-call allocations, lazy kernel selection

    base, prof = [], []
    for _ in range(args.rounds):
        base.append(one_round(model, inputs, args.new_tokens))
        with lmprof.profile() as session:
            prof.append(one_round(model, inputs, args.new_tokens))
        assert session.run.generations, "lmprof saw no generation: instrumentation is broken"
    b, p = statistics.median(base), statistics.median(prof)
    print(f"model {resolved.model_id}, {args.new_tokens} new tokens, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"baseline decode tok/s: median {b:.2f}  rounds {[round(x, 2) for x in base]}")
    print(f"lmprof   decode tok/s: median {p:.2f}  rounds {[round(x, 2) for x in prof]}")
    paired = statistics.median(x / y for x, y in zip(prof, base))
    print(f"ratio lmprof/baseline: {p / b:.3f} of medians, {paired:.3f} median of per-round ratios "
          f"(overhead {100 * (1 - paired):+.1f}%, target <= 3%)")  # fmt: skip


if __name__ == "__main__":
    main()
