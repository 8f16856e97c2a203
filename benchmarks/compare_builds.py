"""The engine's decode step in two builds side by side: a git revision against this checkout.

    python benchmarks/compare_builds.py REV [--threads N] [--pairs 3] [--new-tokens 128]
                                        [--batch 1] [--int8] [--model DIR]

REV (a commit, tag or branch) is checked out into a temporary git worktree, removed at the
end. Each pair runs one measurement in each tree, alternating which goes first, every one a
fresh Python process whose `lmprof` is that tree's `src` (so its native kernels build from
that tree's sources, cached apart by their hash). A measurement loads the default model (or
--model) for the native decode step (fused projections, huge pages where offered), warms up,
generates 3 x --new-tokens tokens and reports the median decode step. Printed: each pair's
two medians and their ratio (REV's step over this checkout's: above 1, this checkout is
faster), then the median ratio. On a shared host one generation's median step can move by
half between two runs; only a ratio that holds in every pair says anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(src: Path, args: argparse.Namespace) -> float:
    """Median decode step (seconds) of the lmprof under `src`; runs in the child process,
    whose PYTHONPATH (run_child) puts `src` ahead of the installed lmprof."""
    import importlib

    import torch

    from lmprof.engine import EngineOptions, load_hf_folder
    from lmprof.engine.huge_pages import huge_pages_offered
    from lmprof.models import resolve_model

    generate = importlib.import_module("lmprof.engine.generate").generate
    loaded_from = Path(importlib.import_module("lmprof").__file__).resolve()
    if src.resolve() not in loaded_from.parents:
        raise SystemExit(f"error: lmprof came from {loaded_from}, not from {src}")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = EngineOptions(
        native_decode=True, huge_pages=huge_pages_offered(), fuse_qkv=True, fuse_gate_up=True, int8=args.int8
    )
    model = load_hf_folder(args.model or resolve_model(None).path, options)
    prompts = torch.stack([torch.arange(100, 132).roll(i) for i in range(args.batch)])
    generate(model, prompts, 8)  # warm-up: first calls allocate
    steps: list[float] = []
    for _ in range(3):
        steps += generate(model, prompts, args.new_tokens, eos_token_id=2).decode_step_s
    return statistics.median(steps)


def run_child(src: Path, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--child", str(src), "--new-tokens", str(args.new_tokens)]
    command += ["--batch", str(args.batch)] + (["--int8"] if args.int8 else [])
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--model", str(args.model)] if args.model else []
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: the measurement under {src} failed: {tail}")
    return json.loads(lines[-1])["median_step_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", help="git revision to compare against this checkout")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--int8", action="store_true", help="int8 weight-only instead of fp32")
    parser.add_argument(
        "--model", type=Path, default=None, help="HF folder (default: lmprof's default model)"
    )
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.batch < 1 or args.new_tokens < 2:
        parser.error("--pairs and --batch must be >= 1 and --new-tokens >= 2")
    if args.child is not None:
        print(json.dumps({"median_step_s": measure(args.child, args)}))
        return 0
    if args.rev is None:
        parser.error("give the git revision to compare against this checkout (e.g. HEAD~1)")

    resolved = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{args.rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if resolved.returncode != 0:
        print(f"error: {args.rev!r} is not a commit of {REPO} (try a hash from `git log`)", file=sys.stderr)
        return 2
    commit = resolved.stdout.strip()
    with tempfile.TemporaryDirectory(prefix="lmprof-compare-") as scratch:
        tree = Path(scratch) / "tree"
        added = subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), commit],
            capture_output=True,
            text=True,
        )
        if added.returncode != 0:
            why = (added.stderr.strip().splitlines() or ["no message"])[-1]
            print(f"error: could not check out {args.rev} into a worktree: {why}", file=sys.stderr)
            return 2
        try:
            trees = {args.rev: tree / "src", "this checkout": REPO / "src"}
            kind = "int8" if args.int8 else "fp32"
            print(
                f"median decode step, {kind}, batch {args.batch}, {args.threads or 'torch default'} thread(s)"
            )
            ratios = []
            for pair in range(args.pairs):
                order = list(trees) if pair % 2 == 0 else list(trees)[::-1]
                steps = {name: run_child(trees[name], args) for name in order}
                ratio = steps[args.rev] / steps["this checkout"]
                ratios.append(ratio)
                print(
                    f"  pair {pair + 1}: {args.rev} {steps[args.rev] * 1e3:.2f} ms, this checkout "
                    f"{steps['this checkout'] * 1e3:.2f} ms: {ratio:.2f}x",
                    flush=True,
                )
            print(f"median ratio {statistics.median(ratios):.2f}x ({args.rev}'s step over this checkout's)")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
