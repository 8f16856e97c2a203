"""The native kernel's two tiles side by side: weight-row pairs against row triples.

    python benchmarks/native_tiles.py [--model DIR] [--threads N] [--batch 8] [--rounds 7] [--int8]

One pass runs every projection of a decode step (per layer the fused QKV, o, fused gate/up
and down projections, then the lm_head) through `lmprof_native::linear` on the engine's own
weights as the native decode step reads them (fused projections, huge pages where the kernel
offers them), so the weights stream from memory as they do in decoding. Each round times one
pass with each tile, the order alternating by round, and the per-round ratio's median is
printed with the spread: the ratio is what a tile buys where both saw the same machine.

Pairs (tile_rows=2) read two weight rows against up to 8 activation rows (dot2xN in
kernels.h); triples (tile_rows=3) three rows against up to 8 (dot3xN), which the decode step
picks at batch 8 and above. Where the extension is built without AVX-512 both run pairs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmprof.engine import EngineOptions, load_hf_folder  # noqa: E402
from lmprof.engine.native import load_native_ops  # noqa: E402
from lmprof.huge_pages import HugePagesUnavailable, check_huge_pages  # noqa: E402
from lmprof.models import resolve_model  # noqa: E402

TILES = {"pairs": 2, "triples": 3}


def step_matrices(model) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, fp32 scales or None) of every product of one decode step: every linear layer."""
    from lmprof.engine.native_decode import native_scales
    from lmprof.engine.quant import Int8Linear

    out = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Int8Linear)):
            scales = native_scales(module)
            out.append((module.weight, scales if scales.numel() else None))
    return out


def time_pass(ops, matrices, x_by_k: dict[int, torch.Tensor], tile_rows: int) -> float:
    start = time.perf_counter()
    for weight, scales in matrices:
        ops.linear(x_by_k[weight.shape[1]], weight, None, scales, tile_rows)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="HF folder (default: lmprof's default model)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--int8", action="store_true", help="int8 weight-only matrices instead of fp32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        check_huge_pages()
        huge_pages = True
    except HugePagesUnavailable:
        huge_pages = False
    folder = args.model or resolve_model(None).path
    model = load_hf_folder(
        folder,
        EngineOptions(
            native_decode=True, fuse_qkv=True, fuse_gate_up=True, int8=args.int8, huge_pages=huge_pages
        ),
    )
    ops = load_native_ops()
    matrices = step_matrices(model)
    flop = sum(2 * args.batch * w.shape[0] * w.shape[1] for w, _ in matrices)
    weight_bytes = sum(w.numel() * w.element_size() for w, _ in matrices)
    generator = torch.Generator().manual_seed(0)
    x_by_k = {k: torch.randn(args.batch, k, generator=generator) for k in {w.shape[1] for w, _ in matrices}}

    with torch.inference_mode():
        for tile_rows in TILES.values():  # warm-up: page in, build nothing lazily inside a timing
            time_pass(ops, matrices, x_by_k, tile_rows)
        seconds: dict[str, list[float]] = {name: [] for name in TILES}
        ratios: list[float] = []
        for round_index in range(args.rounds):
            order = list(TILES) if round_index % 2 == 0 else list(reversed(TILES))
            this_round = {name: time_pass(ops, matrices, x_by_k, TILES[name]) for name in order}
            for name, s in this_round.items():
                seconds[name].append(s)
            ratios.append(this_round["pairs"] / this_round["triples"])

    dtype = "int8" if args.int8 else "fp32"
    pages = "huge pages" if huge_pages else "4 KiB pages"
    print(
        f"one decode step's {len(matrices)} products, {dtype} weights ({weight_bytes / 1e6:.0f} MB, {pages}), "
        f"batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds"
    )
    for name, values in seconds.items():
        best = min(values)
        print(
            f"  {name:8s} (tile_rows={TILES[name]}): best {best * 1e3:7.2f} ms, median "
            f"{statistics.median(values) * 1e3:7.2f} ms, {flop / best / 1e9:6.1f} GFLOP/s at best"
        )
    print(
        f"  triples / pairs speed: median {statistics.median(ratios):.2f}x "
        f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
