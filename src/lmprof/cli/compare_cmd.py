"""`lmprof compare RUN_A RUN_B [...]`: saved runs side by side against the first, for people and CI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmprof.analyze.compare import FIGURES, compare
from lmprof.analyze.thresholds import breaches, check_thresholds, parse_thresholds
from lmprof.cli.report_console import report_console
from lmprof.errors import UsageError
from lmprof.record.files import write_atomic
from lmprof.record.groups import load_run_group
from lmprof.record.load import is_load_run
from lmprof.render.compare_cells import fmt_check
from lmprof.render.compare_html import render_comparison_html
from lmprof.render.compare_json import render_comparison_json
from lmprof.render.compare_markdown import render_comparison_markdown
from lmprof.render.compare_terminal import render_comparison

EXIT_THRESHOLD_BREACHED = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare saved runs: changes, noise, --fail-on thresholds",
        description=(
            "Compare saved runs against the first (the baseline). Each RUN is a run folder, its "
            "run.json, or a folder of run folders (repeat runs of one configuration, which give "
            "the run-to-run noise). Exits 1 when a --fail-on threshold is breached."
        ),
        epilog="figures: " + ", ".join(spec.name for spec in FIGURES) + ", memory_<kind>_bytes (with --deep)",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="baseline first, then the runs to compare with it")
    p.add_argument(
        "--markdown", metavar="FILE", help="write a markdown table (for a pull request); '-' for stdout"
    )
    p.add_argument("--html", metavar="FILE", type=Path, help="write a self-contained HTML comparison")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    p.add_argument(
        "--fail-on",
        metavar="EXPR",
        action="append",
        default=[],
        help="exit 1 when a change passes a threshold, e.g. 'ttft_s>+10%%', 'peak_rss_bytes>+50MB', "
        "'decode_tokens_per_s<-5%%' (repeatable or comma-separated)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if any(is_load_run(location) for location in args.runs):  # `lmprof load` runs (all must be)
        from lmprof.cli import load_cmd

        return load_cmd.compare_load(args)
    if len(args.runs) < 2:
        raise UsageError("compare needs at least two runs: the baseline, then one or more to compare with it")
    if args.json and args.markdown == "-":
        raise UsageError("--json and --markdown - both write to stdout; pick one")
    thresholds = parse_thresholds(args.fail_on)  # before loading: a typo fails fast
    comparison = compare([load_run_group(location) for location in args.runs])
    checks = check_thresholds(comparison, thresholds)

    if args.markdown and args.markdown != "-":
        _write(Path(args.markdown), render_comparison_markdown(comparison, checks))
    if args.html:
        _write(args.html, render_comparison_html(comparison, checks))

    table_on_stdout = not args.json and args.markdown != "-"
    if args.json:
        print(render_comparison_json(comparison, checks))
    elif args.markdown == "-":
        sys.stdout.write(render_comparison_markdown(comparison, checks))
    else:
        rendered = render_comparison(comparison, checks)
        console = report_console(rendered)
        console.print(rendered)
        for label, path in (("markdown", args.markdown), ("HTML", args.html)):
            if path:
                console.print(f"{label} comparison written to {path}", highlight=False)

    breached = breaches(checks)
    if not table_on_stdout:  # the table already names them otherwise
        for check in breached:
            print(f"lmprof: {fmt_check(check, comparison)}", file=sys.stderr)
    return EXIT_THRESHOLD_BREACHED if breached else 0


def _write(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise UsageError(f"cannot write '{path}': {exc.strerror or exc}") from exc
