"""`lmprof show RUN_DIR`: render a saved run again from its run.json alone."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmprof.cli.common import add_json_option
from lmprof.cli.report_console import report_console
from lmprof.errors import UsageError
from lmprof.record.load import is_load_run
from lmprof.record.run import load_run
from lmprof.record.serve import is_serve_run
from lmprof.record.throughput import is_throughput_report
from lmprof.render.html_report import write_html_report
from lmprof.render.python_table import render_python_table
from lmprof.render.terminal import render_run


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="re-render a saved run", description="Render RUN_DIR/run.json again.")
    p.add_argument(
        "run_dir",
        type=Path,
        help="a folder written by `lmprof profile`, `load`, `serve --profile-out` or `bench throughput`",
    )
    add_json_option(p, what="the Run record")
    p.add_argument(
        "--html", action="store_true", help="write RUN_DIR/report.html again from run.json and print its path"
    )
    p.add_argument(
        "--functions",
        choices=["self", "total", "calls"],
        default=None,
        metavar="SORT",
        help="only the Python function table (--deep runs), sorted by self, total or calls (cProfile only)",
    )
    p.add_argument("--limit", type=int, default=40, help="rows of the function table (default 40)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if is_load_run(args.run_dir):  # `lmprof load`'s record of an endpoint under load
        from lmprof.cli import load_cmd

        return load_cmd.show_load(args)
    if is_throughput_report(args.run_dir):  # `lmprof bench throughput`'s report
        from lmprof.cli import bench_cmd

        return bench_cmd.show(args)
    if is_serve_run(args.run_dir):  # a server's life (`lmprof serve --profile-out`), not a profile
        from lmprof.cli import serve_cmd

        return serve_cmd.show(args)
    record = load_run(args.run_dir)
    if args.html:
        run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
        print(write_html_report(record, run_dir))
    elif args.json:
        print(record.to_json())
    elif args.functions:
        if record.deep is None or not record.deep.python:
            raise UsageError(f"'{args.run_dir}' has no Python function profile: profile with --deep")
        rendered = render_python_table(record.deep.python, sort_by=args.functions, limit=args.limit)
        report_console(rendered).print(rendered)
    else:
        rendered = render_run(record, args.run_dir)
        report_console(rendered).print(rendered)
    return 0
