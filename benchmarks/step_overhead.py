"""What a native decode step spends outside its one native call, side by side with the call.

    python benchmarks/step_overhead.py [--model DIR] [--threads N] [--batch 1,8] [--rounds 5]
                                       [--new-tokens 64] [--int8]

Each round generates `--new-tokens` tokens per batch size with the native step (fused
projections, huge pages where offered) and splits every decode step, as generate() times
it, into the `lmprof_native::decode_step` call (a clock around NativeStep.run) and the rest:
the Python loop, the model call, the greedy pick and the stop check. Printed per batch: the
median step, the median call and the median of each step's remainder, in microseconds and as
a share of the step. The remainder runs after the weights have streamed through the caches,
so every op in it starts cold: a few microseconds an op in a warm loop is tens here.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmprof.engine import EngineOptions, load_hf_folder  # noqa: E402
from lmprof.engine.huge_pages import huge_pages_offered  # noqa: E402
from lmprof.engine.native_decode import NativeStep  # noqa: E402
from lmprof.models import resolve_model  # noqa: E402

# `lmprof.engine.generate` the attribute is the function; the module holds it.
generate = importlib.import_module("lmprof.engine.generate").generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="HF folder (default: lmprof's default model)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--int8", action="store_true", help="int8 weight-only instead of fp32")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        parser.error(f"--batch takes whole numbers, comma-separated; got {args.batch!r}")
    if min(batches) < 1 or args.rounds < 1 or args.new_tokens < 2:
        parser.error("batch sizes must be >= 1, --rounds >= 1 and --new-tokens >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = EngineOptions(
        native_decode=True, huge_pages=huge_pages_offered(), fuse_qkv=True, fuse_gate_up=True, int8=args.int8
    )
    model = load_hf_folder(args.model or resolve_model(None).path, options)

    call_s: list[float] = []
    real_run = NativeStep.run

    def timed_run(self: NativeStep, *run_args):
        start = time.perf_counter()
        logits = real_run(self, *run_args)
        call_s.append(time.perf_counter() - start)
        return logits

    NativeStep.run = timed_run
    prompts = {b: torch.stack([torch.arange(100, 132).roll(i) for i in range(b)]) for b in batches}
    for b in batches:
        generate(model, prompts[b], 8)  # warm-up: first calls allocate
    steps: dict[int, list[float]] = {b: [] for b in batches}
    calls: dict[int, list[float]] = {b: [] for b in batches}
    outside: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(args.rounds):
        for b in batches:
            call_s.clear()
            step_s = generate(model, prompts[b], args.new_tokens, eos_token_id=2).decode_step_s
            steps[b] += step_s
            calls[b] += call_s
            outside[b] += [s - c for s, c in zip(step_s, call_s)]
    NativeStep.run = real_run

    kind = "int8" if args.int8 else "fp32"
    print(
        f"native decode steps, {kind}, {torch.get_num_threads()} thread(s), {args.rounds} rounds of "
        f"{args.new_tokens} tokens (medians over every step)"
    )
    for b in batches:
        step, call, rest = (statistics.median(v) * 1e6 for v in (steps[b], calls[b], outside[b]))
        print(
            f"  batch {b}: step {step:8.0f} us, native call {call:8.0f} us, outside it {rest:5.0f} us "
            f"({rest / step:.1%} of the step)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
