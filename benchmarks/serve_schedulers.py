"""`lmprof serve`'s schedulers side by side: sequential, async and static-batch, each its own
server on the same model, driven closed-loop at 1, 2, 4 and 8 concurrent users.

    python benchmarks/serve_schedulers.py                       # the default model
    python benchmarks/serve_schedulers.py --model tiny --requests 8 --output-tokens 16

Rounds interleave: every round runs every (users, scheduler) pair once, rotating the
scheduler order, so drift on the machine (other work, clocks) lands on all three alike. The
load comes from `lmprof load`'s library when it imports (`lmprof.load`), else from the small
streaming client below. Prints output tokens/s and p50/p99 TTFT per cell, with the CPU and
the date. All servers bind 127.0.0.1 on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from lmprof.bench.server_process import ServerProcess
from lmprof.collect.system import collect_cpu

SCHEDULERS = {
    "sequential": ["--scheduler", "sequential"],
    "async": ["--scheduler", "async"],
    "static-batch": ["--scheduler", "static-batch", "--batch-size", "8", "--batch-wait-ms", "20"],
}


@dataclass
class Cell:
    """One (users, scheduler) pair, summed over rounds."""

    output_tokens: int = 0
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def server_for(model: str, scheduler: str, extra: list[str]) -> ServerProcess:
    return ServerProcess(
        model, ["--port", "0", "--served-model-name", "bench", *SCHEDULERS[scheduler], *extra]
    )


# --- the built-in client ------------------------------------------------------------------


async def _one(session: aiohttp.ClientSession, url: str, body: dict, cell: Cell) -> None:
    start = time.perf_counter()
    first = None
    tokens = 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            cell.errors += 1
            await resp.read()
            return
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if first is not None:
        cell.ttft_s.append(first)
    cell.output_tokens += tokens


async def drive_builtin(url: str, users: int, requests: int, body: dict, cell: Cell) -> None:
    """Closed loop: `users` clients, each sending its next request when its last one ends."""
    remaining = [requests]

    async def user(session: aiohttp.ClientSession) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await _one(session, url, body, cell)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=600)
    ) as session:
        start = time.perf_counter()
        await asyncio.gather(*(user(session) for _ in range(users)))
        cell.wall_s += time.perf_counter() - start


def drive_lmprof_load(url: str, users: int, requests: int, args: argparse.Namespace, cell: Cell) -> None:
    """The same level through `lmprof load`'s library."""
    from lmprof.analyze.load import summarize, ttft_s
    from lmprof.load.bench import new_load_run, run_load
    from lmprof.load.options import LoadOptions

    opts = LoadOptions(
        base_url=url, model="bench", concurrency=[users], requests=requests,
        input_tokens=args.input_tokens, output_tokens=args.output_tokens, stream=True, ignore_eos=True,
    )  # fmt: skip
    run = run_load(opts, new_load_run(opts, sys.argv))
    (level,) = summarize(run).levels
    cell.output_tokens += level.output_tokens
    cell.wall_s += level.duration_s
    cell.errors += level.sent - level.completed
    measured = [r for r in run.requests if not r.warmup and r.ok]
    cell.ttft_s += [t for r in measured if (t := ttft_s(r)) is not None]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--users", default="1,2,4,8", help="closed-loop concurrency levels")
    p.add_argument("--requests", type=int, default=16, help="requests per level per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--input-tokens", type=int, default=64, help="about this many prompt tokens")
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--client", choices=["auto", "builtin", "lmprof-load"], default="auto")
    p.add_argument("--server-arg", action="append", default=[], help="passed to every `lmprof serve`")
    args = p.parse_args()
    users_levels = [int(u) for u in args.users.split(",")]

    use_load = args.client == "lmprof-load"
    if args.client == "auto":
        try:
            import lmprof.load.bench  # noqa: F401

            use_load = True
        except ImportError:
            use_load = False
    body = {"model": "bench", "prompt": "the " * args.input_tokens, "max_tokens": args.output_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip

    servers = {name: server_for(args.model, name, args.server_arg) for name in SCHEDULERS}
    cells = {(u, s): Cell() for u in users_levels for s in SCHEDULERS}
    client = "lmprof load (library)" if use_load else "built-in streaming client"
    try:
        urls = {
            name: server.start(timeout_s=600) for name, server in servers.items()
        }  # a first use may build the model
        for url in urls.values():  # warm each server: first calls allocate and compile
            asyncio.run(drive_builtin(url, 1, 2, {**body, "max_tokens": 4}, Cell()))
        order = list(SCHEDULERS)
        for rnd in range(args.rounds):
            for users in users_levels:
                for name in order:
                    url = urls[name]
                    if use_load:
                        try:
                            drive_lmprof_load(url, users, args.requests, args, cells[(users, name)])
                            continue
                        except Exception as exc:  # noqa: BLE001 (its API is young: fall back, say so)
                            print(
                                f"lmprof load failed ({type(exc).__name__}: {exc}); using the built-in client"
                            )
                            use_load, client = False, "built-in streaming client"
                    asyncio.run(drive_builtin(url, users, args.requests, body, cells[(users, name)]))
                order = order[1:] + order[:1]
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()

    print(f"lmprof serve schedulers: model {args.model}, {args.input_tokens}-word prompts, "
          f"{args.output_tokens} output tokens, {args.requests} requests x {args.rounds} rounds per cell")  # fmt: skip
    print(
        f"CPU {collect_cpu()['model']} ({os.cpu_count()} cores); {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; client: {client}"
    )
    head = f"{'users':>5}" + "".join(f" | {name:^30}" for name in SCHEDULERS)
    sub = f"{'':>5}" + "".join(f" | {'tok/s':>8} {'TTFT p50':>10} {'p99':>10}" for _ in SCHEDULERS)
    print(head)
    print(sub)
    print("-" * len(sub))
    for users in users_levels:
        row = f"{users:>5}"
        for name in SCHEDULERS:
            c = cells[(users, name)]
            p50, p99 = percentile(c.ttft_s, 50) * 1000, percentile(c.ttft_s, 99) * 1000
            row += f" | {c.tokens_per_s:>8.1f} {p50:>8.0f}ms {p99:>8.0f}ms"
            if c.errors:
                row += f" ({c.errors} err)"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
