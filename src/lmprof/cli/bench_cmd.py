"""`lmprof bench throughput MODEL`: start `lmprof serve` in each configuration, drive it with
lmprof load, and report what each throughput technique buys (lmprof.bench)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmprof.cli.common import add_json_option, add_model_argument, add_out_option
from lmprof.errors import UsageError

DEFAULT_OUT = "lmprof-bench-throughput"
QUICK = {"concurrency": "1,8", "requests": 16, "rounds": 1}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="experiments over lmprof's own server")
    kinds = p.add_subparsers(dest="bench", metavar="EXPERIMENT", required=True)
    t = kinds.add_parser(
        "throughput",
        help="every scheduler and cache of `lmprof serve`, measured by `lmprof load` in interleaved rounds",
        description="Start `lmprof serve MODEL` (loopback, a free port) per configuration: schedulers "
        "sequential, async, static-batch and continuous; response and prefix caches off, alone and "
        "together; on prompts with no sharing, mixed lengths (each request's input and output lengths drawn "
        "within +-75%, lmprof load --range-ratio 0.75), a shared system prompt, and exact repeats. Drive each with "
        "closed-loop users and report output tokens/s, requests/s, goodput, TTFT and TPOT percentiles, "
        "server memory, and each technique's gain over sequential, paired by round.",
    )
    add_model_argument(t, "built-in name or safetensors folder (lmprof's engine)")
    t.add_argument("--concurrency", default=None, help="closed-loop users per level (default 1,2,4,8,16)")
    t.add_argument("--requests", type=int, default=None, help="requests per level (default 4 per user, >= 8)")
    t.add_argument("--input-tokens", type=int, default=64, help="prompt tokens (default 64)")
    t.add_argument("--output-tokens", type=int, default=32, help="tokens each answer (default 32)")
    t.add_argument("--prefix-tokens", type=int, default=256, help="shared system prompt tokens (default 256)")
    t.add_argument("--repeat-share", type=float, default=0.5, help="share of exact repeats (default 0.5)")
    t.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2)")
    t.add_argument(
        "--workloads", default=None, help="no-sharing,mixed-lengths,shared-prefix,repeats (default: all)"
    )
    t.add_argument("--slo", default=None, help="goodput objective (default ttft=2s,tpot=200ms)")
    t.add_argument("--threads", type=int, default=None, help="the server's model threads (default: serve's)")
    t.add_argument("--native", action=argparse.BooleanOptionalAction, default=None,
                   help="every server's decode step in lmprof's C++ kernels, or --no-native for torch ops "
                   "(default: lmprof serve's, on where the kernels build)")  # fmt: skip
    t.add_argument("--quick", action="store_true",
                   help="a small matrix: 1 and 8 users, 16 requests, 1 round, no async rows, fewer cache rows")  # fmt: skip
    t.add_argument("--html", action="store_true", help="also write OUT/report.html with the plots")
    t.add_argument("--from", dest="from_dir", type=Path, default=None, metavar="DIR",
                   help="render the report saved in DIR again (no server is started)")  # fmt: skip
    add_out_option(t, DEFAULT_OUT, "folder for throughput.json (and report.html)")
    add_json_option(t, "the figures", "the table")
    t.set_defaults(handler=run_throughput_cmd)


def options_from_args(args: argparse.Namespace):
    from lmprof.bench.plan import DEFAULT_SLO, WORKLOADS, BenchOptions
    from lmprof.load.options import parse_levels, parse_slo

    quick = dict(QUICK) if args.quick else {}
    concurrency = parse_levels(
        args.concurrency or quick.get("concurrency") or "1,2,4,8,16", "--concurrency", int
    )
    slo = args.slo or DEFAULT_SLO
    parse_slo(slo)  # one line now, not after the first server started
    workloads = [w.strip() for w in args.workloads.split(",")] if args.workloads else list(WORKLOADS)
    opts = BenchOptions(
        model=args.model, out=args.out or Path(DEFAULT_OUT), concurrency=concurrency,
        requests=args.requests if args.requests is not None else quick.get("requests"),
        input_tokens=args.input_tokens, output_tokens=args.output_tokens, prefix_tokens=args.prefix_tokens,
        repeat_share=args.repeat_share, rounds=args.rounds or quick.get("rounds") or 2, quick=args.quick,
        slo=slo, threads=args.threads, workloads=workloads, native=args.native,
    )  # fmt: skip
    if args.rounds is not None and args.rounds < 1:
        raise UsageError(f"--rounds must be a positive integer, got {args.rounds}")
    opts.validate()
    return opts


def run_throughput_cmd(args: argparse.Namespace) -> int:
    from lmprof.bench.throughput import run_throughput

    if args.from_dir is not None:
        from lmprof.record.throughput import load_throughput_report

        report = load_throughput_report(args.from_dir)
        _render(args, report, args.from_dir)
        return 0
    opts = options_from_args(args)
    try:
        opts.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out '{opts.out}' cannot be created: {exc.strerror}") from exc

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run_throughput(opts, ["lmprof", *args.argv], progress)
    _render(args, report, opts.out)
    return 0


def show(args: argparse.Namespace) -> int:
    """`lmprof show DIR` on a throughput report: the same rendering as `--from DIR`."""
    from lmprof.record.throughput import load_throughput_report

    folder = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    _render(args, load_throughput_report(args.run_dir), folder)
    return 0


def _render(args: argparse.Namespace, report, out: Path) -> None:
    from lmprof.analyze.throughput import summarize_throughput
    from lmprof.render.throughput_html import write_throughput_html
    from lmprof.render.throughput_json import render_throughput_json
    from lmprof.render.throughput_terminal import render_throughput

    summary = summarize_throughput(report)
    if args.html:
        path = write_throughput_html(report, summary, out)
        print(f"html: {path}", file=sys.stderr)
    if args.json:
        print(render_throughput_json(report, summary), end="")
    else:
        print(render_throughput(report, summary), end="")
    print(f"report: {out / 'throughput.json'}", file=sys.stderr)
