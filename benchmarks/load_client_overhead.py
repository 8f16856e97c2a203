"""How much CPU `lmprof load`'s client spends per streamed token: one client process streams
from the mock OpenAI server (in its own process) at >= 500 tokens/s, and this prints the
client's CPU time as a share of one core (target: under 50 %), with the CPU model and date.

    python benchmarks/load_client_overhead.py [--concurrency 16] [--itl-ms 10] [--seconds 5]

The client's CPU is `time.process_time` over the measured level (every thread of the
process: the event loop, aiohttp, JSON parsing, the lag ticker, the metrics scraper).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.mock_openai_server import spawned_mock_server  # noqa: E402

from lmprof.analyze.load import summarize  # noqa: E402
from lmprof.collect.system import collect_cpu  # noqa: E402
from lmprof.load.bench import new_load_run, run_load  # noqa: E402
from lmprof.load.options import LoadOptions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    with spawned_mock_server(ttft_ms=20, itl_ms=args.itl_ms) as url:
        opts = LoadOptions(
            base_url=url, concurrency=[args.concurrency], duration_s=args.seconds, warmup=args.concurrency,
            input_tokens=64, output_tokens=args.output_tokens,
        )  # fmt: skip
        run = run_load(opts, new_load_run(opts, ["benchmarks/load_client_overhead.py"]))
    level = summarize(run).levels[0]
    cpu_share = level.client_cpu_share or 0.0
    per_token_us = run.levels[0].cpu_s / max(level.output_tokens, 1) * 1e6
    print(f"date            {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"cpu             {collect_cpu().get('model')}")
    print(f"streams         {args.concurrency} concurrent, {args.itl_ms:g} ms between tokens")
    print(f"requests        {level.completed} in {level.duration_s:.2f} s")
    print(f"output tokens/s {level.output_tps:,.0f}")
    print(f"client CPU      {cpu_share * 100:.1f}% of one core ({per_token_us:.0f} µs per token)")
    print(
        f"loop lag p99    {level.loop_lag_s['p99'] * 1e3:.2f} ms" if level.loop_lag_s else "loop lag p99    -"
    )
    print(
        "target          under 50% of one core at >= 500 tokens/s: "
        + ("met" if cpu_share < 0.5 else "NOT met")
    )
    if level.output_tps < 500:
        print("warning: under 500 tokens/s; raise --concurrency or lower --itl-ms")


if __name__ == "__main__":
    main()
