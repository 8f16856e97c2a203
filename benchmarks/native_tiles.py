"""The native kernel's tiles side by side: single weight rows, row pairs and row triples.

    python benchmarks/native_tiles.py [--model DIR] [--threads N] [--batch 8] [--rounds 7] [--int8]

One pass runs every projection of a decode step (per layer the fused QKV, o, fused gate/up
and down projections, then the lm_head) through `lmprof_native::linear` on the engine's own
weights as the native decode step reads them (fused projections, huge pages where the kernel
offers them), so the weights stream from memory as they do in decoding. Each round times one
pass with each tile, the order rotating by round, and the per-round ratio to pairs is
printed as a median with the spread: the ratio is what a tile buys where all saw the same
machine.

Every tile is kernels.h's dot_rows<R, N>: R weight rows against N activation rows at once.
Singles (tile_rows=1) take up to 8 activation rows; pairs (2) and triples (3) up to 8 with
AVX-512 and 4 with AVX2 (register room). The decode step picks triples from batch 8 with
AVX-512 and from batch 4 with AVX2, pairs below (auto_tile_rows).
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
from lmprof.engine.huge_pages import huge_pages_offered  # noqa: E402
from lmprof.engine.native import load_native_ops  # noqa: E402
from lmprof.models import resolve_model  # noqa: E402

TILES = {"singles": 1, "pairs": 2, "triples": 3}


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
    huge_pages = huge_pages_offered()
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
        ratios: dict[str, list[float]] = {name: [] for name in TILES if name != "pairs"}
        names = list(TILES)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            this_round = {name: time_pass(ops, matrices, x_by_k, TILES[name]) for name in order}
            for name, s in this_round.items():
                seconds[name].append(s)
            for name in ratios:
                ratios[name].append(this_round["pairs"] / this_round[name])

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
    for name, values in ratios.items():
        print(
            f"  {name} / pairs speed: median {statistics.median(values):.2f}x "
            f"(rounds {min(values):.2f}-{max(values):.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
