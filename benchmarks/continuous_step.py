"""The continuous batcher's decode step beside today's fixed-batch decode_step, in paired rounds.

    python benchmarks/continuous_step.py [--model DIR] [--threads 1] [--rounds 5] [--steps 16]

For batch B in 1, 2, 4, 8 and each decode path (torch ops with fused projections; the native
C++ step), every round times `--steps` decode steps of:

  fixed       generate.decode_step on a static cache of B rows (prefilled together), plus the
              greedy pick: what a static batch decodes at today
  continuous  ContinuousBatcher.step() with B requests decoding (prefill done before timing):
              the whole iteration, bookkeeping and per-request picks included

The two alternate within a round (order flipped every round) so both see the same machine
load; the ratio continuous / fixed is taken per round and its median printed. Then a churn
run: requests with random output lengths join and leave, so the batch changes nearly every
step; its decode-only steps are grouped by batch size and set beside the fixed step.

Then the mixed step: a step where decode rows and a newcomer's prefill chunk run as one forward
pass (the batcher's default) against the same step run as two passes (mixed_steps=False: the
native decode step, then the prefill), paired and alternated per round, for a few row counts
and chunk lengths.

Then the prefix cache: time to first token of a 256-token shared prompt + 16 own tokens on a
miss and then on a hit (the issue's target: the hit at least 3x faster).

Last, the measurement behind the KV layout (engine/slot_pool.py): the time to gather a paged
KV pool into the contiguous [B, KV, S, hd] tensors that SDPA and the native step read, every
layer, once per step, as a paged pool without a paged-attention kernel would have to.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmprof.collect.system import collect_cpu  # noqa: E402
from lmprof.engine import EngineOptions, decode_step, load_hf_folder, new_decode_state, prefill  # noqa: E402
from lmprof.engine.continuous import ContinuousBatcher, Request  # noqa: E402
from lmprof.engine.generate import prepare_native_decode, sample  # noqa: E402
from lmprof.engine.prefix_cache import PrefixCache  # noqa: E402
from lmprof.models import resolve_model  # noqa: E402

BATCHES = (1, 2, 4, 8)


def prompts_for(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(length)] for _ in range(batch)]


@torch.inference_mode()
def fixed_steps_s(model, prompts: list[list[int]], steps: int, native: bool) -> list[float]:
    B, P = len(prompts), len(prompts[0])
    state = new_decode_state(model, B, P + steps + 1, "static")
    logits = prefill(model, state, torch.tensor(prompts))
    tokens = sample(logits)
    if native:
        prepare_native_decode(model, state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = decode_step(model, state, tokens, native=native)
        tokens = sample(logits)
        times.append(time.perf_counter() - start)
    return times


def continuous_steps_s(model, prompts: list[list[int]], steps: int, native: bool) -> list[float]:
    P = len(prompts[0])
    batcher = ContinuousBatcher(
        model, max_batch=max(BATCHES), max_seq_len=P + steps + 2, prefill_chunk=P * len(prompts),
        native_decode=native,
    )  # fmt: skip
    for prompt in prompts:
        batcher.submit(Request(prompt, max_new_tokens=steps + 2))
    batcher.step()  # admission and every prefill
    times = []
    for _ in range(steps):
        record = batcher.step()
        assert record.decode_rows == len(prompts) and record.prefill_tokens == 0
        times.append(record.wall_s)
    return times


def churn_steps_s(model, native: bool, prompt_len: int, requests: int, seed: int) -> dict[int, list[float]]:
    """Decode-only step times by batch size while requests of random lengths come and go."""
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    batcher = ContinuousBatcher(
        model,
        max_batch=max(BATCHES),
        max_seq_len=prompt_len + 64,
        prefill_chunk=prompt_len,
        native_decode=native,
    )
    by_batch: dict[int, list[float]] = {}
    pending = [Request(prompts_for(1, prompt_len, vocab, rng.randrange(1 << 30))[0], rng.randint(4, 48))
               for _ in range(requests)]  # fmt: skip
    while pending or batcher.has_work:
        if pending and rng.random() < 0.5:
            batcher.submit(pending.pop())
        record = batcher.step()
        if record.prefill_tokens == 0 and record.decode_rows:
            by_batch.setdefault(record.decode_rows, []).append(record.wall_s)
    return by_batch


MIXED_CASES = ((7, 16), (7, 56), (7, 112), (4, 256))  # (decode rows, newcomer's prompt tokens)


def mixed_step_s(
    model, mixed: bool, decode_rows: int, prompt_tokens: int, prompt_len: int, seed: int
) -> float:
    """The wall time of the one step in which `decode_rows` streams decode and a newcomer of
    `prompt_tokens` tokens is prefilled, as one pass (mixed) or two."""
    vocab = model.config.vocab_size
    batcher = ContinuousBatcher(
        model, max_batch=8, max_seq_len=prompt_len + prompt_tokens + 64, prefill_chunk=256, mixed_steps=mixed
    )  # fmt: skip
    for prompt in prompts_for(decode_rows, prompt_len, vocab, seed):
        batcher.submit(Request(prompt, max_new_tokens=32))
    for _ in range(4):  # their prefill, then decode steps alone
        batcher.step()
    batcher.submit(Request(prompts_for(1, prompt_tokens, vocab, seed + 1)[0], max_new_tokens=4))
    record = batcher.step()
    assert record.decode_rows == decode_rows and record.prefill_tokens == prompt_tokens, record
    return record.wall_s


def prefix_ttft_s(model, shared: int, own: int, seed: int) -> tuple[float, float]:
    """Time to first token (one step: prefill and pick) of a prompt of `shared` + `own` tokens
    on a miss, then of another prompt with the same `shared` tokens on a prefix-cache hit."""
    vocab = model.config.vocab_size
    system = prompts_for(1, shared, vocab, seed)[0]
    tails = prompts_for(2, own, vocab, seed + 1)
    cache = PrefixCache(budget_bytes=1 << 30, block_tokens=16)
    batcher = ContinuousBatcher(
        model, max_batch=1, max_seq_len=shared + own + 2, prefill_chunk=shared + own, prefix_cache=cache
    )
    times = []
    for tail in tails:
        state = batcher.submit(Request(system + tail, max_new_tokens=1))
        times.append(batcher.step().wall_s)
        assert state.tokens and state.cached_tokens == (shared if times[1:] else 0)
    return times[0], times[1]


def paged_gather_s(model, batch: int, context: int, page: int = 16, repeats: int = 5) -> float:
    """One step's gather of a paged pool into contiguous K/V for every layer (median of repeats)."""
    config = model.config
    pages_per_row = -(-context // page)
    pool = torch.randn(batch * pages_per_row, config.n_kv_heads, page, config.head_dim)
    table = torch.randperm(batch * pages_per_row).view(batch, pages_per_row)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(2 * config.n_layers):  # K and V
            gathered = pool[table]  # [B, pages, KV, page, hd]
            gathered.transpose(1, 2).reshape(batch, config.n_kv_heads, pages_per_row * page, config.head_dim)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="HF folder (default: lmprof's default model)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per contender per round")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--paths", default="torch,native", help="decode paths: torch, native or both")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.model or resolve_model(None).path
    fused = {"fuse_qkv": True, "fuse_gate_up": True}
    models = {}
    for path in args.paths.split(","):
        models[path] = load_hf_folder(folder, EngineOptions(native_decode=path == "native", **fused))
    vocab = next(iter(models.values())).config.vocab_size
    print(
        f"CPU {collect_cpu()['model']} ({os.cpu_count()} cores), torch threads {args.threads}; "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; load {os.getloadavg()[0]:.1f}; model {folder.name}; "
        f"prompt {args.prompt_len} tokens; {args.steps} steps x {args.rounds} rounds"
    )
    ratios: dict[tuple[str, int], list[float]] = {}
    medians: dict[tuple[str, str, int], list[float]] = {}
    for round_index in range(args.rounds):
        for path, model in models.items():
            native = path == "native"
            for B in BATCHES:
                prompts = prompts_for(B, args.prompt_len, vocab, seed=round_index)
                contenders = {
                    "fixed": lambda: fixed_steps_s(model, prompts, args.steps, native),  # noqa: B023
                    "continuous": lambda: continuous_steps_s(model, prompts, args.steps, native),  # noqa: B023
                }
                order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
                got = {name: statistics.median(contenders[name]()) for name in order}
                for name, value in got.items():
                    medians.setdefault((path, name, B), []).append(value)
                ratios.setdefault((path, B), []).append(got["continuous"] / got["fixed"])
    print(
        f"\n{'path':<7} {'batch':>5} {'fixed ms':>9} {'continuous ms':>14} {'ratio':>6} {'ratio range':>14}"
    )
    for (path, B), values in ratios.items():
        fixed = statistics.median(medians[(path, "fixed", B)]) * 1e3
        cont = statistics.median(medians[(path, "continuous", B)]) * 1e3
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"{path:<7} {B:>5} {fixed:>9.2f} {cont:>14.2f} {statistics.median(values):>6.2f} {spread:>14}")

    print("\nchurn: requests join and leave; decode-only steps by batch size (median ms, steps)")
    for path, model in models.items():
        by_batch = churn_steps_s(model, path == "native", args.prompt_len, requests=24, seed=1)
        cells = []
        for B in sorted(by_batch):
            fixed = medians.get((path, "fixed", B))
            beside = f" (fixed {statistics.median(fixed) * 1e3:.2f})" if fixed else ""
            cells.append(f"B{B} {statistics.median(by_batch[B]) * 1e3:.2f} x{len(by_batch[B])}{beside}")
        print(f"{path:<7} " + "; ".join(cells))

    model = models.get("native") or next(iter(models.values()))
    print("\nmixed step: decode rows and a newcomer's prefill as one pass or two (median ms, ratio range)")
    for rows, prompt_tokens in MIXED_CASES:
        got: dict[bool, list[float]] = {True: [], False: []}
        for round_index in range(args.rounds):
            for mixed in (True, False) if round_index % 2 == 0 else (False, True):
                got[mixed].append(
                    mixed_step_s(model, mixed, rows, prompt_tokens, args.prompt_len, round_index)
                )
        one, two = (statistics.median(got[m]) * 1e3 for m in (True, False))
        spread = [a / b for a, b in zip(got[True], got[False], strict=True)]
        print(f"  {rows} decode rows + {prompt_tokens:>3} prompt tokens: one pass {one:7.1f} ms, two {two:7.1f} ms, "
              f"one/two {statistics.median(spread):.2f} ({min(spread):.2f}-{max(spread):.2f})")  # fmt: skip

    model = next(iter(models.values()))
    pairs = [prefix_ttft_s(model, 256, 16, seed) for seed in range(args.rounds)]
    miss, hit = (statistics.median(p[i] for p in pairs) * 1e3 for i in (0, 1))
    ratio = statistics.median(p[0] / p[1] for p in pairs)
    print(f"\nprefix cache, 256 shared + 16 own prompt tokens, time to first token: miss {miss:.1f} ms, "
          f"hit {hit:.1f} ms, miss/hit {ratio:.1f}x (median of {args.rounds} pairs)")  # fmt: skip
    step_ms = statistics.median(medians[(next(iter(models)), "continuous", 8)]) * 1e3
    kv_bytes = 2 * model.config.n_layers * model.config.n_kv_heads * model.config.head_dim * 4
    print(f"\npaged pool gathered for attention every step, batch 8 (row pool's decode step: {step_ms:.2f} ms "
          f"at context {args.prompt_len + args.steps})")  # fmt: skip
    for context in (args.prompt_len + args.steps, 512, 2048):
        gather_ms = paged_gather_s(model, 8, context, repeats=3) * 1e3
        print(f"  context {context:>5}: {gather_ms:8.2f} ms to copy {8 * context * kv_bytes / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
