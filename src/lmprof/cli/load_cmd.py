"""`lmprof load URL`: load-test an OpenAI-compatible endpoint; and the load-run side of
`lmprof show` and `lmprof compare`, which dispatch here when given a load run."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
import traceback
from pathlib import Path

from lmprof.errors import LmprofError, UsageError
from lmprof.record.load import LoadRun, RequestRecord
from lmprof.record.run import STATUS_COMPLETE, STATUS_FAILED, STATUS_INCOMPLETE

EXIT_INTERRUPTED = 130
EXIT_THRESHOLD_BREACHED = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load",
        help="load-test an OpenAI-compatible endpoint: TTFT, TPOT, ITL, throughput, goodput",
        description=(
            "Send requests to an OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama, lmprof serve) "
            "in a closed loop (--concurrency) or an open loop (--rate), and measure them as vLLM's "
            "serving benchmark does, plus latency from each request's scheduled time. Saves a load "
            "run for `lmprof show` and `lmprof compare`."
        ),
    )
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8000 (or its /v1, or a full endpoint URL)")
    g = p.add_argument_group("endpoint")
    g.add_argument("--endpoint", help="/v1/completions (default) or /v1/chat/completions")
    g.add_argument("--no-stream", dest="stream", action="store_false", help="ask for whole responses")
    g.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="sent as a Bearer token")
    g.add_argument("--model", help="model name to ask for (default: the first of GET /v1/models)")
    g.add_argument("--timeout", type=float, default=600.0, metavar="S", help="per request (default 600 s)")
    g.add_argument(
        "--no-ignore-eos", dest="ignore_eos", action="store_false", help="do not send ignore_eos: true"
    )
    g = p.add_argument_group("load")
    g.add_argument("--concurrency", metavar="N[,N...]", help="closed loop: N users (a list sweeps)")
    g.add_argument(
        "--rate",
        metavar="R[,R...]",
        help="open loop: R requests/s, Poisson (a list sweeps; inf: all at once)",
    )
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrivals (1 = Poisson)")
    g.add_argument("--max-concurrency", type=int, help="open loop: at most this many in flight")
    g.add_argument("--requests", type=int, metavar="M", help="requests per level")
    g.add_argument("--duration", type=float, metavar="S", help="seconds per level")
    g.add_argument("--warmup", type=int, default=0, metavar="K", help="K requests first, never counted")
    g.add_argument(
        "--sweep",
        type=int,
        nargs="?",
        const=5,
        default=0,
        metavar="STEPS",
        help="probe the saturating rate (closed loop), then open-loop rates up to it (default 5 steps)",
    )
    g = p.add_argument_group("prompts")
    g.add_argument("--input-tokens", type=int, default=128)
    g.add_argument("--output-tokens", type=int, default=64)
    g.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        metavar="R",
        help="vary lengths: each request's input and output lengths drawn uniformly from "
        "[round(L*(1-R)), round(L*(1+R))] (at least 1) around --input-tokens and --output-tokens, "
        "R in [0, 1) (default 0: fixed), as vLLM's --random-range-ratio; max_tokens asks the drawn "
        "output length; one --seed draws the same lengths; refused with --prompts (a file sets its own)",
    )
    g.add_argument("--tokenizer", help="count tokens with this model's tokenizer (path or built-in name)")
    g.add_argument(
        "--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} or {"messages": [...]} a line'
    )
    g.add_argument("--prefix-tokens", type=int, default=0, help="length of one shared prompt prefix")
    g.add_argument("--prefix-share", type=float, default=0.0, help="share of requests starting with it")
    g.add_argument("--repeat-share", type=float, default=0.0, help="share repeating an earlier prompt")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("output")
    g.add_argument("--slo", help="goodput bounds, e.g. ttft=500ms,tpot=50ms,e2el=2s")
    g.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    g.add_argument("--out", type=Path, help="run folder (default lmprof-runs/load-<timestamp>/)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(handler=run)


def options_from_args(args: argparse.Namespace):
    from lmprof.load.options import LoadOptions, check_options, parse_levels, parse_slo, split_url

    base_url, endpoint = split_url(args.url, args.endpoint)
    opts = LoadOptions(
        base_url=base_url, endpoint=endpoint, stream=args.stream, api_key=args.api_key, model=args.model,
        concurrency=parse_levels(args.concurrency, "--concurrency", int),
        rates_rps=parse_levels(args.rate, "--rate", float), burstiness=args.burstiness,
        max_concurrency=args.max_concurrency, requests=args.requests, duration_s=args.duration,
        warmup=args.warmup, sweep_steps=args.sweep or 0, input_tokens=args.input_tokens,
        output_tokens=args.output_tokens, range_ratio=args.range_ratio, tokenizer=args.tokenizer, prompts_file=args.prompts,
        prefix_tokens=args.prefix_tokens, prefix_share=args.prefix_share, repeat_share=args.repeat_share,
        seed=args.seed, slo_s=parse_slo(args.slo), timeout_s=args.timeout, ignore_eos=args.ignore_eos,
    )  # fmt: skip
    check_options(opts)
    return opts


def _check_writable(out: Path) -> None:
    probe = out.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"cannot write the run to '{out}': pass --out to a writable folder")


def run(args: argparse.Namespace) -> int:
    from lmprof.load.bench import new_load_run, run_load

    opts = options_from_args(args)
    out = args.out or Path("lmprof-runs") / f"load-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    _check_writable(out)
    counter = None
    if opts.tokenizer:
        from lmprof.load.prompts import TokenCounter

        counter = TokenCounter(opts.tokenizer)
    record = new_load_run(opts, ["lmprof", *_masked(getattr(args, "argv", []))])
    progress = _progress() if args.progress and sys.stderr.isatty() else None
    code, error = 0, None
    try:
        run_load(opts, record, progress=progress, counter=counter)
        record.status = STATUS_COMPLETE
    except KeyboardInterrupt as exc:
        record.status, code, error = STATUS_INCOMPLETE, EXIT_INTERRUPTED, exc
    except LmprofError as exc:
        if not _measured(record.requests):
            raise  # bad input found before anything worth keeping: no run folder
        record.status, code, error = STATUS_FAILED, exc.exit_code, exc
    except Exception as exc:  # a bug or an unforeseen failure: keep what was measured, say why
        record.status, code, error = STATUS_FAILED, 1, exc
    finally:
        if progress is not None:
            progress.close()
    if error is not None:
        record.error = {"type": type(error).__name__, "message": str(error) or type(error).__name__}
        if getattr(args, "debug", False):
            traceback.print_exception(error)
    record.save(out)
    _write_html(record, out)
    _print(record, str(out), args.json)
    if record.status == STATUS_INCOMPLETE:
        print(f"lmprof: interrupted; the partial run was saved to {out}/run.json", file=sys.stderr)
    elif record.status == STATUS_FAILED:
        print(f"lmprof: error: {record.error['message']} (saved to {out}/run.json)", file=sys.stderr)
    return code


def _masked(argv: list[str]) -> list[str]:
    """The command line as saved: the API key replaced, so a run folder can be shared."""
    out = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--api-key":
            out.append("***")
        else:
            out.append("--api-key=***" if arg.startswith("--api-key=") else arg)
    return out


def _measured(requests: list[RequestRecord]) -> bool:
    return any(not r.warmup for r in requests)


def _write_html(record: LoadRun, out: Path) -> Path:
    from lmprof.render.load_html import write_load_html

    return write_load_html(record, out)


def _print(record: LoadRun, run_dir: str | None, as_json: bool) -> None:
    from lmprof.analyze.load import summarize

    summary = summarize(record)
    if as_json:
        from lmprof.render.load_json import render_load_json

        print(render_load_json(record, summary, run_dir))
        return
    from lmprof.cli.report_console import report_console
    from lmprof.render.load_terminal import render_load_run

    rendered = render_load_run(record, summary, run_dir)
    report_console(rendered).print(rendered)


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lmprof.load.bench import LoadProgress

    class RichProgress(LoadProgress):
        """A live bar on stderr (only on a terminal: the caller checks)."""

        def __init__(self) -> None:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(stderr=True), transient=True,
            )  # fmt: skip
            self.bar.start()
            self.task = None

        def level_started(self, title: str, total_requests: int | None, duration_s: float | None) -> None:
            self.task = self.bar.add_task(title, total=total_requests)
            self.done = 0
            # --duration alone: the bar fills with time, and the count goes in the title.
            self.timed = (
                (time.monotonic(), duration_s, title) if total_requests is None and duration_s else None
            )
            if self.timed:
                self.bar.update(self.task, total=duration_s)

        def request_done(self, record: RequestRecord) -> None:
            if self.task is None:
                return
            self.done += 1
            if self.timed:
                start, duration_s, title = self.timed
                elapsed = min(time.monotonic() - start, duration_s)
                self.bar.update(self.task, completed=elapsed, description=f"{title}: {self.done} done")
            else:
                self.bar.advance(self.task)

        def level_finished(self) -> None:
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None

        def close(self) -> None:
            self.bar.stop()

    return RichProgress()


# --- `lmprof show` and `lmprof compare` of load runs ---------------------------------------


def show_load(args: argparse.Namespace) -> int:
    from lmprof.record.load import load_load_run

    record = load_load_run(args.run_dir)
    run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    if getattr(args, "html", False):
        print(_write_html(record, run_dir))
    else:
        _print(record, str(run_dir), getattr(args, "json", False))
    return 0


def compare_load(args: argparse.Namespace) -> int:
    from lmprof.analyze.load_compare import check_load_thresholds, compare_load_runs, parse_load_thresholds
    from lmprof.cli.report_console import report_console
    from lmprof.record.load import is_load_run, load_load_run
    from lmprof.render.load_compare import render_load_comparison, render_load_comparison_json

    if len(args.runs) < 2:
        raise UsageError("compare needs at least two runs: the baseline, then one or more to compare with it")
    other = [str(location) for location in args.runs if not is_load_run(location)]
    if other:
        raise UsageError(
            f"'{other[0]}' is not a load run: compare load runs (`lmprof load`) only with each other"
        )
    if getattr(args, "markdown", None) or getattr(args, "html", None):
        raise UsageError(
            "--markdown and --html compare profile runs; compare load runs as a table or with --json"
        )
    thresholds = parse_load_thresholds(args.fail_on)  # before loading: a typo fails fast
    runs = [load_load_run(location) for location in args.runs]
    comparison = compare_load_runs(runs, [str(location) for location in args.runs])
    checks = check_load_thresholds(comparison, thresholds)
    if args.json:
        print(render_load_comparison_json(comparison, checks))
    else:
        rendered = render_load_comparison(comparison, checks)
        report_console(rendered).print(rendered)
    breached = [c for c in checks if c.breached]
    for check in breached:
        print(
            f"lmprof: --fail-on {check.threshold.text} breached by {check.run} at {check.level}",
            file=sys.stderr,
        )
    return EXIT_THRESHOLD_BREACHED if breached else 0
