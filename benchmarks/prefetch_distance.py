"""Software prefetch distances side by side, in whole native decode steps.

    python benchmarks/prefetch_distance.py [--model DIR] [--threads N] [--rounds 30]
                                           [--distances 0,2048,4096,8192] [--int8 [--w8a8]] [--batch B]

Fills the per-CPU table in src/lmprof/engine/native/tuning.py. One process loads the engine
(native step, fused projections, huge pages where the kernel offers them) once; each round
sets each distance with `lmprof_native::set_prefetch`, in an order that rotates by
round, and generates `--new-tokens` tokens for `--batch` sequences, keeping the median
decode step. Each distance is set for narrow and wide tiles alike, so it is the distance of
whichever tiles `--batch` runs (batch 1-3: narrow, the table's first number; 4 and up: wide,
its second). Distance 0 is kernels.h's default (no software
prefetch at batch 1, the rows two ahead into L2 at batch > 1); any other prefetches that many
bytes ahead into L1. Before the
distances, a sum over 256 MiB (best of 3) reads the host's bandwidth of that moment.

Printed per distance: the median weight bandwidth of its steps, its per-round ratio to
distance 0 (the speed-up; the host moves within a run, so only ratios from the same round
mean anything) and to the sum; then the same for the rounds in the faster half of the
host's bandwidth, where a prefetch has the most latency to hide. What tuning.py's table had
set for this CPU is restored at the end (the op is process-wide).
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

from lmprof.engine import EngineOptions, cost, load_hf_folder  # noqa: E402
from lmprof.engine.huge_pages import huge_page_buffer, huge_pages_offered  # noqa: E402
from lmprof.engine.native import load_native_ops  # noqa: E402
from lmprof.engine.native.tuning import prefetch_bytes  # noqa: E402
from lmprof.models import resolve_model  # noqa: E402

# `lmprof.engine.generate` the attribute is the function; the module holds it.
generate = importlib.import_module("lmprof.engine.generate").generate
SUM_BYTES = 256 * 2**20


def read_gbps(buffer: torch.Tensor, repeats: int = 3) -> float:
    """Best of `repeats` sums over `buffer`, GB/s: the host's read bandwidth of this moment."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = max(best, buffer.numel() * buffer.element_size() / (time.perf_counter() - start) / 1e9)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="HF folder (default: lmprof's default model)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument(
        "--distances", default="0,2048,4096,8192", help="bytes ahead, comma-separated; 0 is the base"
    )
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded at once")
    parser.add_argument("--int8", action="store_true", help="int8 weight-only instead of fp32")
    parser.add_argument("--w8a8", action="store_true", help="with --int8: int8 activations too (W8A8)")
    args = parser.parse_args(argv)
    try:
        distances = sorted({int(d) for d in args.distances.split(",")} | {0})
    except ValueError:
        parser.error(f"--distances takes whole numbers of bytes, comma-separated; got {args.distances!r}")
    if min(distances) < 0 or args.rounds < 1 or args.new_tokens < 2 or args.batch < 1:
        parser.error("distances must be >= 0, --rounds >= 1, --new-tokens >= 2 and --batch >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    huge = huge_pages_offered()
    folder = args.model or resolve_model(None).path
    options = EngineOptions(
        native_decode=True,
        huge_pages=huge,
        fuse_qkv=True,
        fuse_gate_up=True,
        int8=args.int8,
        int8_activations=args.int8 and args.w8a8,
    )
    model = load_hf_folder(folder, options)
    weight_bytes = cost.decode_weight_bytes(model.config, "int8" if args.int8 else "float32")
    ops = load_native_ops()
    buffer = huge_page_buffer(SUM_BYTES).view(torch.float32) if huge else torch.empty(SUM_BYTES // 4)
    buffer.fill_(1.0)
    prompt = torch.stack([torch.arange(100, 132).roll(b) for b in range(args.batch)])
    generate(model, prompt, 8)  # warm-up: first calls allocate

    sums: list[float] = []
    gbps: dict[int, list[float]] = {d: [] for d in distances}
    for round_index in range(args.rounds):
        sums.append(read_gbps(buffer))
        shift = round_index % len(distances)
        for distance in distances[shift:] + distances[:shift]:
            ops.set_prefetch(distance, distance)  # narrow and wide: whichever tiles this batch runs
            steps = generate(model, prompt, args.new_tokens).decode_step_s
            gbps[distance].append(weight_bytes / statistics.median(steps) / 1e9)
    ops.set_prefetch(*prefetch_bytes())

    kind = ("W8A8" if args.w8a8 else "int8") if args.int8 else "fp32"
    print(
        f"prefetch distances, {kind} native step at batch {args.batch} ({weight_bytes / 1e6:.0f} MB, "
        f"{'huge pages' if huge else '4 KiB pages'}), {torch.get_num_threads()} thread(s), {args.rounds} rounds "
        f"of {args.new_tokens} tokens; this CPU's table entry: {tuple(prefetch_bytes())} bytes (narrow, wide)"
    )
    fast = sorted(range(args.rounds), key=lambda i: sums[i])[args.rounds // 2 :]

    def line(rounds: list[int]) -> None:
        for d in distances:
            to_base = statistics.median(gbps[d][i] / gbps[0][i] for i in rounds)
            to_sum = statistics.median(gbps[d][i] / sums[i] for i in rounds)
            print(
                f"  {d:6d} bytes: {statistics.median(gbps[d][i] for i in rounds):5.1f} GB/s of weights a step, "
                f"{to_base:.3f}x distance 0, {to_sum:.2f} of the sum"
            )

    print(f"all rounds (sum over 256 MiB: median {statistics.median(sums):.1f} GB/s)")
    line(list(range(args.rounds)))
    print(f"the faster half of the host's rounds (sum >= {sums[fast[0]]:.1f} GB/s)")
    line(fast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
