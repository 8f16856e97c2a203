"""`lmprof ablate [MODEL]`: the transformers baseline, the engine, each engine switch alone and the
best combination, every one a profiled Run, in one table."""

from __future__ import annotations

import argparse
import json
import sys

from lmprof.cli.common import (
    add_device_option,
    add_json_option,
    add_model_argument,
    add_out_option,
    add_threads_option,
)
from lmprof.cli.outcome import check_writable, default_run_dir
from lmprof.cli.report_console import report_console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate",
        help="measure what each engine optimization buys, against transformers and the bandwidth floor",
        description="Profile transformers' generate, lmprof's engine, each engine switch alone (KV cache, "
        "attention, GQA, fusion, dtype, int8, native decode step, huge pages, compile, batch, chunked prefill, threads) and the best "
        "combination, in interleaved rounds; each row-round is a Run saved under --out.",
    )
    add_model_argument(p, "built-in name, folder or hub id")
    p.add_argument(
        "--max-new-tokens", type=int, default=64, help="tokens each row generates (default %(default)s)"
    )
    p.add_argument(
        "--prompt-tokens", type=int, default=32, help="prompt length in tokens (default %(default)s)"
    )
    add_threads_option(p, what="for every row")
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; figures are medians (default %(default)s)"
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated rows to run, e.g. transformers,engine,int8 (`best` included)",
    )
    p.add_argument(
        "--compile", action="store_true", help="also run the torch.compile row (20-90 s to compile on a CPU)"
    )
    add_device_option(p, default="cpu")
    p.add_argument(
        "--refresh-probes",
        action="store_true",
        help="measure the hardware probes again instead of using the cache",
    )
    add_out_option(p, default="./lmprof-runs/<time>-ablate-<model>", what="folder for the runs")
    add_json_option(p, what="the report", instead_of="the table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from lmprof.ablation.runner import AblationRequest, run_ablation
    from lmprof.render.ablation_table import render_ablation
    from lmprof.workloads.request import choose_device

    out = args.out or default_run_dir(f"ablate-{args.model or 'default'}")
    req = AblationRequest(
        model=args.model,
        out=out,
        max_new_tokens=args.max_new_tokens,
        prompt_tokens=args.prompt_tokens,
        threads=args.threads,
        rounds=args.rounds,
        only=[name.strip() for name in args.only.split(",") if name.strip()] if args.only else None,
        compile_decode=args.compile,
        device=choose_device(args.device),
        refresh_probes=args.refresh_probes,
    )
    req.validate()
    check_writable(out)

    def progress(k, rounds, row, figures, error) -> None:
        if error is not None:
            state = f"failed: {error}"
        elif figures is not None and figures.decode_tokens_per_s is not None:
            state = f"{figures.decode_tokens_per_s:.1f} decode tok/s"
        else:
            state = "done"
        print(f"round {k}/{rounds}  {row.name:<16} {state}", file=sys.stderr, flush=True)

    report = run_ablation(req, progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        rendered = render_ablation(report)
        report_console(rendered).print(rendered)
    return 0
